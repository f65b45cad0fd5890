"""``kl_forgetting`` (forgetting): how far the tuned model's next-token distributions
moved from the base model's, on text the run did not train on.

On held-out general text (WikiText-2 test documents cut into disjoint chunks of
``chunk_tokens`` tokens, each predicted from the prefix token, as lm-eval's first
rolling window is) and on non-target task prompts (BBH, a few items of every
subtask: the prompt the template renders, then the reference response), every
next-token position gets, from the full-vocabulary distributions of the base model
(p) and of the tuned model (q) on the same tokens:

* ``kl``: KL(p ‖ q) = sum_v p (log p − log q), in nats;
* ``nll_change``: −log q(next token) − (−log p(next token)), tuned minus base;
* ``flip``: 1 where argmax p ≠ argmax q.

Each chunk / item is one row holding its per-token means; the measures are means
over rows, so the runner's bootstrap resamples chunks and items. Every row is
already a paired (tuned vs base) quantity: the base model itself is not evaluated
(its values are 0 by definition), and more of each is more forgetting (all three
are lower-is-better). The summary has one forgetting line, the headline KL
(``kl_wikitext``, or ``kl_bbh`` without WikiText): the comparison's continuous
forgetting axis; the comparison also pairs every other measure between arms, per
chunk and per seed (:meth:`KlForgetting.compared`).

The logits come from one plain transformers + peft forward pass per batch, once
with the adapter and once under ``disable_adapter()`` (the metric loads base + the
subject's adapter in-process: :attr:`Metric.in_process`), log-softmax in float32,
one sequence's [length, vocab] at a time. "RL's Razor" (Shenfeld et al. 2025)
reports that forgetting tracks this KL to the base.

Cost, measured on the 2-core CPU with the 0.5B default student in float32: about
3.5 s per 256-token chunk (both passes; 7-9 s while other jobs share the cores), so
the default sizes (16 chunks, 27 x 2 BBH prompts) take about 4 min per model: the
metric is opt-in in ``standard`` and ``full``, not in ``quick``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.cache import fingerprint
from eval.metrics.base import (
    FORGETTING,
    Measure,
    Metric,
    Row,
    SummaryTerm,
    check_limit,
    register_metric,
)
from eval.metrics.bbh import bbh_subtasks
from teacher.core.config import ConfigError, did_you_mean
from teacher.core.tasks import get_task
from teacher.core.templates import get_template

SOURCES = ("wikitext", "bbh")
DTYPES = ("float32", "bfloat16", "float16", "auto")  # auto: bfloat16 on CUDA, else float32
FIELDS = {"kl": "KL(base ‖ tuned) per token, nats",
          "nll_change": "NLL of the next token, tuned − base, per token, nats",
          "flip_rate": "share of tokens whose top-1 prediction changed"}


@dataclass
class KlForgettingSettings:
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    documents: int | None = 16  # WikiText-2 test documents (62 in all)
    chunk_tokens: int = 256  # tokens per WikiText chunk (one row each)
    chunks_per_document: int | None = 1  # the first chunks of each document; null: all
    bbh_subtasks: list[str] = field(default_factory=lambda: ["all"])
    bbh_limit: int | None = 2  # items per BBH subtask
    bbh_template: str = "bbh-cot-zeroshot"  # the prompt a BBH item is scored as
    max_length: int = 1024  # tokens of a BBH sequence (longer ones are cut)
    batch_size: int = 4  # sequences per forward pass: bounds memory
    dtype: str = "float32"
    device: str = "auto"  # auto: CUDA if available, else CPU
    checkpoints: bool = False  # also per checkpoint


@dataclass(frozen=True)
class Text:
    """One scored unit before tokenization: a WikiText document (cut into chunks
    later) or a BBH item (``prompt`` as the task renders it, then ``completion``)."""

    id: str
    source: str
    prompt: str | list[dict[str, str]]
    completion: str
    subtask: str = ""


@dataclass(frozen=True)
class Scored:
    """One row's tokens; positions ``scored_from..len(ids)-1`` are predicted."""

    id: str
    source: str
    subtask: str
    ids: list[int]
    scored_from: int
    text: int  # index of its Text in the data


def _measure(source: str, name: str) -> Measure:
    # Lower is better for all three: each is a move away from the base model.
    return Measure(f"kl_forgetting/{source}/{name}", False, "mean", name,
                   (("source", source),), FIELDS[name])


HEADLINE = _measure("wikitext", "kl")
# The summary's forgetting line (one continuous axis, the comparison's Pareto axis):
# KL on WikiText-2, or on BBH prompts where only those are scored.
KL_UNIT = "KL(base ‖ tuned), nats per token"


def summary_task(source: str) -> str:
    """The key of a source's KL line in ``results["summary"]["forgetting"]``."""
    return f"kl_{source}"


@register_metric
class KlForgetting(Metric):
    name = "kl_forgetting"
    group = "forgetting"
    description = ("KL(base ‖ tuned), NLL change and top-1 flip rate per token on "
                   "WikiText-2 test chunks and BBH prompts")
    settings_type = KlForgettingSettings
    needs_run_dir = True  # the run's adapter
    vs_base = True
    in_process = True
    on_checkpoints = True
    settings: KlForgettingSettings

    # --- settings

    def validate(self) -> None:
        s = self.settings
        if not s.sources or any(x not in SOURCES for x in s.sources):
            bad = next((x for x in s.sources if x not in SOURCES), "")
            raise ConfigError(f"kl_forgetting.sources: one or more of {list(SOURCES)}, "
                              f"got {s.sources!r}{did_you_mean(bad, SOURCES) if bad else ''}")
        check_limit("kl_forgetting.documents", s.documents)
        check_limit("kl_forgetting.chunks_per_document", s.chunks_per_document)
        check_limit("kl_forgetting.bbh_limit", s.bbh_limit)
        for key in ("chunk_tokens", "max_length"):
            if getattr(s, key) < 2:
                raise ConfigError(f"kl_forgetting.{key}: must be >= 2, got {getattr(s, key)}")
        if s.batch_size < 1:
            raise ConfigError(f"kl_forgetting.batch_size: must be >= 1, got {s.batch_size}")
        if s.dtype not in DTYPES:
            raise ConfigError(f"kl_forgetting.dtype: one of {list(DTYPES)}, got {s.dtype!r}"
                              f"{did_you_mean(s.dtype, DTYPES)}")
        self._subtasks()
        try:
            tpl = get_template(s.bbh_template)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"kl_forgetting.bbh_template: {e}") from None
        if tpl.task != "bbh":
            raise ConfigError(f"kl_forgetting.bbh_template: {tpl.key} is a {tpl.task!r} "
                              "template, not a BBH one")

    def _subtasks(self) -> list[str]:
        return bbh_subtasks(self.settings.bbh_subtasks, "kl_forgetting.bbh_subtasks",
                            ConfigError)

    def wants_checkpoints(self) -> bool:
        return self.settings.checkpoints

    # --- data

    def load(self, run: Any, data_dir: Path | None) -> list[Text]:
        s, texts = self.settings, []
        if "wikitext" in s.sources:
            texts += [Text(ex.id, "wikitext", "", ex.answer)
                      for ex in get_task("wikitext-2").load("test", data_dir, s.documents)]
        if "bbh" in s.sources:
            tpl = get_template(s.bbh_template)
            for sub in self._subtasks():
                task = get_task(f"bbh/{sub}")
                texts += [Text(ex.id, "bbh", task.prompt(ex, tpl, data_dir=data_dir),
                               task.reference_response(ex), sub)
                          for ex in task.load("test", data_dir, s.bbh_limit)]
        return texts

    def data_fingerprint(self, data: list[Text]) -> Any:
        return fingerprint([(t.id, t.source, t.prompt, t.completion) for t in data])

    def count(self, data: list[Text]) -> int:
        return len(data)

    # --- compute

    async def compute(self, model: Any, data: list[Text], *, data_dir: Path | None,
                      progress: Any = None) -> list[Row]:
        """Rows of the subject ``model`` (:class:`eval.metrics.model.ModelFiles`: the
        base checkpoint and the adapter) against its base."""
        if model.adapter_dir is None:
            raise ValueError("kl_forgetting compares a tuned model with its base: "
                             "it needs an adapter (the base model's values are 0)")
        (rows,) = await asyncio.to_thread(self._compute, Path(model.base_path),
                                          [Path(model.adapter_dir)], data, progress)
        return rows

    async def compute_many(self, base_path: Path, adapter_dirs: Sequence[Path],
                           data: list[Text], *, data_dir: Path | None = None
                           ) -> list[list[Row]]:
        """Each adapter's rows, from one load of the base and one base pass per batch
        (an experiment's runs share their base: half the forward passes of one
        :meth:`compute` per run)."""
        return await asyncio.to_thread(self._compute, Path(base_path),
                                       [Path(d) for d in adapter_dirs], data, None)

    def _compute(self, base_path: Path, adapter_dirs: Sequence[Path], data: list[Text],
                 progress: Any) -> list[list[Row]]:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        from eval.loading import check_adapter_fits
        from teacher.serving.tokenization import PromptTokenizer

        s = self.settings
        device = s.device if s.device != "auto" else (
            "cuda" if torch.cuda.is_available() else "cpu")
        dtype = s.dtype if s.dtype != "auto" else (
            "bfloat16" if device.startswith("cuda") else "float32")
        base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=getattr(torch, dtype))
        names = [f"subject{i}" for i in range(len(adapter_dirs))]
        for adapter_dir in adapter_dirs:
            check_adapter_fits(base, adapter_dir, str(base_path))
        model = PeftModel.from_pretrained(base, str(adapter_dirs[0]), adapter_name=names[0])
        for name, adapter_dir in zip(names[1:], adapter_dirs[1:], strict=True):
            model.load_adapter(str(adapter_dir), adapter_name=name)
        model = model.to(device).eval()
        tokenizer = PromptTokenizer.from_pretrained(str(base_path))
        seqs = self.sequences(tokenizer, data)
        pad = tokenizer.hf.pad_token_id
        pad = pad if pad is not None else (tokenizer.eos_token_id or 0)

        rows: list[dict[int, Row]] = [{} for _ in names]
        done_texts: set[int] = set()
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))  # less padding
        for start in range(0, len(order), s.batch_size):
            batch = [seqs[i] for i in order[start : start + s.batch_size]]
            width = max(len(q.ids) for q in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, q in enumerate(batch):  # right padding: a causal model's real
                ids[b, : len(q.ids)] = torch.tensor(q.ids)  # positions never see it
                mask[b, : len(q.ids)] = 1
            ids, mask = ids.to(device), mask.to(device)
            with torch.inference_mode():
                with model.disable_adapter():
                    plain = model(input_ids=ids, attention_mask=mask).logits
                for j, name in enumerate(names):
                    model.set_adapter(name)
                    tuned = model(input_ids=ids, attention_mask=mask).logits
                    for b, q in enumerate(batch):
                        n = len(q.ids)
                        kl, dnll, flip = token_stats(plain[b, q.scored_from - 1 : n - 1],
                                                     tuned[b, q.scored_from - 1 : n - 1],
                                                     ids[b, q.scored_from : n])
                        rows[j][order[start + b]] = _row(q, kl, dnll, flip)
                    del tuned
            del plain
            if progress is not None:  # one step per text (a document's chunks: its first)
                fresh = {q.text for q in batch} - done_texts
                done_texts |= fresh
                progress.update(len(fresh))
        return [[r[i] for i in range(len(seqs))] for r in rows]

    def sequences(self, tokenizer: Any, data: Sequence[Text]) -> list[Scored]:
        """The rows' token ids (``tokenizer``: a
        :class:`teacher.serving.tokenization.PromptTokenizer`), in data order."""
        from eval.perplexity import prefix_token

        s, out = self.settings, []
        for j, t in enumerate(data):
            if t.source == "wikitext":
                tokens = tokenizer.encode_completion(t.completion)
                n = s.chunk_tokens
                pieces = [tokens[i : i + n] for i in range(0, len(tokens), n)]
                if len(pieces) > 1 and len(pieces[-1]) < n:
                    pieces.pop()  # chunks of N tokens: the remainder only when it is all
                pieces = [p for p in pieces if p][: s.chunks_per_document]
                first = prefix_token(tokenizer)
                out += [Scored(f"{t.id}#{k}", t.source, "", [first, *p], 1, j)
                        for k, p in enumerate(pieces)]
            else:
                ids, scored_from = _prompt_ids(tokenizer, t.prompt)
                ids = (ids + tokenizer.encode_completion(t.completion))[: s.max_length]
                out.append(Scored(t.id, t.source, t.subtask, ids,
                                     min(scored_from, len(ids) - 1), j))
        return out

    # --- reporting

    def measures(self) -> list[Measure]:
        return [_measure(src, f) for src in SOURCES if src in self.settings.sources
                for f in FIELDS]

    def headline(self) -> Measure:
        return HEADLINE if "wikitext" in self.settings.sources else _measure("bbh", "kl")

    def summary(self) -> list[SummaryTerm]:
        """One forgetting line: the headline KL (the rows are already the change from
        the base, so the line is their mean)."""
        m = self.headline()
        return [SummaryTerm((FORGETTING, summary_task(m.where[0][1])), m, KL_UNIT,
                            lambda x, y: x - y)]

    def compared(self) -> list[Measure]:
        """Every other measure, compared between arms chunk by chunk and seed by seed."""
        return [m for m in self.measures() if m != self.headline()]


def _prompt_ids(tokenizer: Any, prompt: str | list[dict[str, str]]) -> tuple[list[int], int]:
    """A prompt's ids as :meth:`PromptTokenizer.encode_prompt` encodes them, and the
    first position to score: the first token of the last message's content, so the
    chat template's fixed head (the same in every item) is context, not a score."""
    if isinstance(prompt, str):
        return tokenizer.encode_prompt(prompt), 1
    text = tokenizer.chat_text(prompt)
    start = text.rfind(prompt[-1]["content"])
    try:
        enc = tokenizer.hf(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:  # a slow tokenizer has no offsets: score it all
        return tokenizer.encode_prompt(prompt), 1
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    first = next((i for i, (a, _b) in enumerate(offsets) if i >= 1 and a >= start), 1)
    return ids, first


def token_stats(base_logits: Any, tuned_logits: Any, targets: Any) -> tuple[Any, Any, Any]:
    """Per position, from [positions, vocab] logits and the [positions] next tokens:
    KL(base ‖ tuned) in nats, NLL change (tuned − base) and top-1 flip (0/1), in float32."""
    import torch
    import torch.nn.functional as F

    lp = torch.log_softmax(base_logits.float(), dim=-1)
    lq = torch.log_softmax(tuned_logits.float(), dim=-1)
    kl = F.kl_div(lq, lp, reduction="none", log_target=True).sum(-1)
    t = targets.long().unsqueeze(-1)
    dnll = (lp.gather(-1, t) - lq.gather(-1, t)).squeeze(-1)
    flip = (lp.argmax(-1) != lq.argmax(-1)).float()
    return kl, dnll, flip


def _row(q: Scored, kl: Any, dnll: Any, flip: Any) -> Row:
    n = int(kl.numel())
    row: Row = {"id": q.id, "source": q.source}
    if q.subtask:
        row["subtask"] = q.subtask
    row.update({"tokens": n,
                "kl": math.fsum(kl.double().tolist()) / n,
                "nll_change": math.fsum(dnll.double().tolist()) / n,
                "flip_rate": math.fsum(flip.double().tolist()) / n,
                "kl_max": float(kl.max())})
    return row
