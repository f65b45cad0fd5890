"""Runtime LoRA adapters: what a peft adapter directory must hold to be served.

An adapter is checked here, before any engine sees it, the same way for every
engine: a directory with ``adapter_config.json`` (peft_type LORA) and
``adapter_model.safetensors``, plain LoRA (no DoRA, no bias, no modules_to_save:
neither vLLM's LoRA kernels nor peft's mixed-adapter batches run those), every
LoRA weight on a linear layer of the base model with matching in/out features
(the base is built on the meta device from its config: no weights are read), and
a rank within the server's ``max_lora_rank``. Each failure is ``InvalidArgument``
naming what to fix: ``path`` (not an adapter), ``base_model`` (trained on another
model) or ``rank``.

These checks read files and build a meta model: callers run them off the event loop.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from teacher.core.rundir import ADAPTER_FILES, adapter_hash
from teacher.serving.errors import InvalidArgument, clip

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<kind>A|B)\.weight$")
_UNSUPPORTED = {  # adapter_config.json keys whose non-default values no engine here serves
    "use_dora": "DoRA",
    "modules_to_save": "modules_to_save (full copies of base modules)",
    "lora_bias": "lora_bias",
}


@dataclass(frozen=True)
class AdapterSpec:
    """A checked adapter directory, as engines load it."""

    name: str
    base_model: str
    path: str  # absolute
    rank: int  # the largest LoRA r over its modules
    revision: str  # content hash of its files (teacher.core.rundir.adapter_hash)


def check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(
            "name",
            f"{clip(name)!r}: an adapter name is 1 to 64 characters of letters, digits, "
            "'.', '_' or '-', starting with a letter or digit",
        )


def read_adapter(
    path: str, *, name: str, base_model: str, base_dir: str, max_rank: int
) -> AdapterSpec:
    """The adapter at ``path`` checked against the base model in ``base_dir``."""
    if not path:
        raise InvalidArgument("path", "empty; give the adapter's directory on the server")
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise InvalidArgument("path", f"{clip(path)!r} is not a directory on the server")
    missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
    if missing:
        raise InvalidArgument(
            "path", f"{clip(path)!r} is not a peft adapter (missing {', '.join(missing)})"
        )
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidArgument("path", f"adapter_config.json does not parse: {e}") from e
    if not isinstance(config, dict):
        raise InvalidArgument("path", "adapter_config.json is not a JSON object")
    if config.get("peft_type") != "LORA":
        raise InvalidArgument(
            "path", f"peft_type {clip(config.get('peft_type'))!r}; only LoRA adapters are served"
        )
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise InvalidArgument("path", f"the adapter uses {what}, which is not served")
    if config.get("bias", "none") != "none":
        raise InvalidArgument("path", f"bias={config['bias']!r}; only bias='none' is served")
    shapes = _lora_shapes(folder / "adapter_model.safetensors")
    rank = _check_fits(shapes, base_model, base_dir)
    if rank > max_rank:
        raise InvalidArgument(
            "rank", f"the adapter's LoRA rank is {rank}, above this server's max_lora_rank "
            f"{max_rank}"
        )
    return AdapterSpec(name, base_model, str(folder), rank, adapter_hash(folder))


def _lora_shapes(weights: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """{module: {"A": shape, "B": shape}} of the LoRA weights in the file."""
    from safetensors import SafetensorError, safe_open

    out: dict[str, dict[str, tuple[int, ...]]] = {}
    try:
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                match = _LORA_KEY.match(key)
                if match is None:
                    raise InvalidArgument(
                        "path", f"weight {clip(key)!r} is not a plain LoRA A/B matrix"
                    )
                shape = tuple(f.get_slice(key).get_shape())
                out.setdefault(match["module"], {})[match["kind"]] = shape
    except SafetensorError as e:
        raise InvalidArgument("path", f"adapter_model.safetensors does not load: {e}") from e
    if not out:
        raise InvalidArgument("path", "the adapter holds no LoRA weights")
    return out


def _check_fits(
    shapes: dict[str, dict[str, tuple[int, ...]]], base_model: str, base_dir: str
) -> int:
    """The adapter's rank, after checking each LoRA pair against the base's linear layer."""
    linear = _linear_layers(base_dir)
    problems: list[str] = []
    rank = 0
    for module, pair in sorted(shapes.items()):
        a, b = pair.get("A"), pair.get("B")
        if a is None or b is None or len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            problems.append(f"{module}: lora_A {a} and lora_B {b} are not a LoRA pair")
            continue
        rank = max(rank, a[0])
        features = linear.get(module)
        if features is None:
            problems.append(f"{module} is not a linear layer of the base")
        elif (a[1], b[0]) != features:
            problems.append(
                f"{module}: the adapter maps {a[1]} -> {b[0]} features, the base layer "
                f"{features[0]} -> {features[1]}"
            )
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise InvalidArgument(
            "base_model",
            f"the adapter does not fit {base_model!r}: {'; '.join(problems[:3])}{more}",
        )
    return rank


@functools.lru_cache(maxsize=8)
def _linear_layers(base_dir: str) -> dict[str, tuple[int, int]]:
    """(in, out) features of every LoRA-servable linear layer of the model in ``base_dir``,
    built on the meta device (no weights read). The output projection is left out: the
    engines serve adapters of the transformer layers only."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    return {
        name: (m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and m is not head
    }
