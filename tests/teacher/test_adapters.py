"""Runtime LoRA adapters over a real grpc.aio server: load, list, generate and score
under an adapter (equal to a plain transformers + peft computation), replace, unload,
and every refusal with its status and field.

The fast tests serve the 2-layer tiny model on the hf engine; the slow ones serve
smollm2-135m on both engines (vLLM runtime LoRA: marked ``vllm``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import grpc
import pytest

from teacher.serving.client import TeacherClient
from teacher.serving.engine import EngineSettings, load_engine
from teacher.serving.errors import NotFound, ResourceExhausted
from teacher.serving.sampling import SamplingParams
from teacher.serving.server import ServerConfig, TeacherServer
from teacher.serving.service import ModelHost, SampleResult, TeacherService
from tests.conftest import HAS_VLLM
from tests.teacher.helpers import ScriptedEngine

PROMPT = "The capital of France is"
COMPLETION = " Paris, a city on the Seine."


def make_lora(base_dir: Path, out: Path, *, seed: int, r: int = 4, b_scale: float = 1.0,
              targets: str | list[str] = "all-linear") -> Path:
    """A real peft LoRA adapter of ``base_dir``: random A and nonzero random B (peft's
    ``init_lora_weights=False``), B scaled by ``b_scale``, so outputs differ from the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets,
                                            init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(b_scale)
    peft.save_pretrained(out)
    return out


class Reference:
    """Plain transformers + peft on the same weights: the numbers the server must give."""

    def __init__(self, base_dir: Path, adapter_dir: Path | None):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(base_dir)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        if adapter_dir is not None:
            model = PeftModel.from_pretrained(model, str(adapter_dir))
        self.model = model.eval()

    def generate(self, prompt: str, max_new_tokens: int) -> list[int]:
        import torch

        ids = self.tok(prompt)["input_ids"]
        with torch.no_grad():
            out = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                      dtype=torch.long), max_new_tokens=max_new_tokens,
                                      do_sample=False)
        new = out[0, len(ids):].tolist()
        eos = self.tok.eos_token_id
        return new[: new.index(eos) + 1] if eos in new else new

    def logprobs(self, prompt: str, completion: str) -> list[float]:
        import torch

        p = self.tok(prompt)["input_ids"]
        c = self.tok(completion, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = self.model(torch.tensor([p + c])).logits[0, len(p) - 1 : -1].float()
        return logits.log_softmax(-1).gather(1, torch.tensor(c)[:, None])[:, 0].tolist()


async def start(model_dir: Path, engine: str, **settings) -> TeacherServer:
    cfg = ServerConfig(models=[], host="127.0.0.1", port=0)
    engine_settings = EngineSettings(name=engine, dtype="float32", max_model_len=1024, **settings)
    host = ModelHost("base", load_engine(engine_settings, str(model_dir), "base", "test"),
                     cfg.limits.max_queue)
    server = TeacherServer(TeacherService([host], cfg.limits), cfg)
    await server.start()
    return server


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The status of a failed call (the client wraps retried codes in its own error)."""
    err = exc if isinstance(exc, grpc.aio.AioRpcError) else exc.__cause__
    assert isinstance(err, grpc.aio.AioRpcError), exc
    return err.code()


async def refused(call, code: grpc.StatusCode, field: str = "") -> str:
    with pytest.raises(Exception) as info:
        await call
    err = info.value if isinstance(info.value, grpc.aio.AioRpcError) else info.value.__cause__
    assert code_of(info.value) == code, err.details()
    assert err.details().startswith(field), err.details()
    return err.details()


async def greedy(client: TeacherClient, model: str, n: int = 16, **kw) -> list[int]:
    (r,) = await client.generate(PROMPT, SamplingParams(max_new_tokens=n, **kw), model=model)
    return list(r.token_ids)


# ---------------------------------------------------------------- fast: tiny model, hf


@pytest.fixture(scope="module")
def tiny_adapters(tiny_model, tmp_path_factory) -> dict[str, Path]:
    import torch
    from peft import IA3Config, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    out = {
        "v1": make_lora(tiny_model, root / "v1", seed=1),
        "v2": make_lora(tiny_model, root / "v2", seed=2),
        "other": make_lora(tiny_model, root / "other", seed=3, targets=["q_proj", "v_proj"]),
        "rank32": make_lora(tiny_model, root / "rank32", seed=4, r=32),
    }
    # An adapter of another base (hidden 32 instead of 64): it must not load.
    config = LlamaConfig.from_pretrained(tiny_model)
    config.hidden_size, config.intermediate_size = 32, 64
    LlamaForCausalLM(config).save_pretrained(root / "small-base")
    out["mismatch"] = make_lora(root / "small-base", root / "mismatch", seed=5)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    ia3 = IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                    feedforward_modules=["down_proj"])
    get_peft_model(model, ia3).save_pretrained(root / "ia3")
    out["ia3"] = root / "ia3"
    (root / "empty").mkdir()
    out["empty"] = root / "empty"
    return out


@pytest.fixture(scope="module")
async def tiny_server(tiny_model):
    server = await start(tiny_model, "hf", max_adapters=2, max_lora_rank=16)
    yield server
    await server.drain_and_stop()


@pytest.fixture
async def tiny_client(tiny_server):
    async with TeacherClient(f"127.0.0.1:{tiny_server.port}", retries=0) as c:
        yield c
    for name in list(tiny_server.service.adapters):  # each test starts with none loaded
        await tiny_server.service.unload_adapter(name)


async def test_load_generate_score_unload(tiny_client, tiny_server, tiny_model, tiny_adapters):
    client, path = tiny_client, tiny_adapters["v1"]
    info = await client.load_adapter("base", "student", str(path))
    assert (info.name, info.base_model, info.rank, info.path, info.replaced) == (
        "student", "base", 4, str(path.resolve()), False)
    listed = {m.name: m for m in await client.list_models()}
    assert listed["student"].base_model == "base" and listed["student"].adapter_rank == 4
    assert listed["student"].revision == info.revision and not listed["student"].is_default
    assert listed["base"].base_model == "" and listed["base"].is_default

    ref, plain = Reference(tiny_model, path), Reference(tiny_model, None)
    under = await greedy(client, "student", 24)
    assert under == ref.generate(PROMPT, 24)
    assert await greedy(client, "base", 24) == plain.generate(PROMPT, 24) != under
    # Base and adapter requests in one batch keep their own weights.
    both = await asyncio.gather(*(greedy(client, m, 24) for m in ["base", "student"] * 3))
    assert both == [plain.generate(PROMPT, 24), under] * 3

    (scored,) = await client.score([(PROMPT, COMPLETION)], model="student", return_tokens=True)
    expected = ref.logprobs(PROMPT, COMPLETION)
    assert scored.logprobs == pytest.approx(expected, abs=1e-4)
    assert scored.nll_sum == pytest.approx(-sum(expected), abs=1e-3)
    (base_scored,) = await client.score([(PROMPT, COMPLETION)], model="base")
    assert abs(base_scored.nll_sum - scored.nll_sum) > 0.1  # its own cache, its own numbers
    batch = await client.generate_batch([PROMPT], SamplingParams(max_new_tokens=24),
                                        model="student")
    assert list(batch[0][0].token_ids) == under

    gone = await client.unload_adapter("student")
    assert gone.name == "student" and gone.revision == info.revision
    assert "student" not in {m.name for m in await client.list_models()}
    await refused(greedy(client, "student"), grpc.StatusCode.NOT_FOUND, "model")
    await refused(client.score([(PROMPT, COMPLETION)], model="student"),
                  grpc.StatusCode.NOT_FOUND, "model")
    await refused(client.unload_adapter("student"), grpc.StatusCode.NOT_FOUND, "name")
    await asyncio.sleep(0.05)  # freeing runs as the last request under it ends
    assert tiny_server.service.hosts["base"].engine._peft is None  # the plain model again


async def test_refusals_name_the_field(tiny_client, tiny_adapters, tiny_server):
    client, a = tiny_client, {k: str(v) for k, v in tiny_adapters.items()}
    bad = grpc.StatusCode.INVALID_ARGUMENT
    assert "not a directory" in await refused(
        client.load_adapter("base", "x", "/no/such/dir"), bad, "path")
    assert "not a peft adapter" in await refused(
        client.load_adapter("base", "x", a["empty"]), bad, "path")
    assert "IA3" in await refused(client.load_adapter("base", "x", a["ia3"]), bad, "path")
    assert "32" in await refused(client.load_adapter("base", "x", a["rank32"]), bad, "rank")
    assert "64" in await refused(
        client.load_adapter("base", "x", a["mismatch"]), bad, "base_model")
    await refused(client.load_adapter("nope", "x", a["v1"]), bad, "base_model")
    await refused(client.load_adapter("base", "no/slash", a["v1"]), bad, "name")
    await refused(client.load_adapter("base", "base", a["v1"]),
                  grpc.StatusCode.ALREADY_EXISTS, "name")
    await refused(client.unload_adapter("base"), bad, "name")
    await refused(client.unload_adapter("never"), grpc.StatusCode.NOT_FOUND, "name")
    await refused(greedy(client, "never"), bad, "model")  # never loaded: a typo
    assert not tiny_server.service.adapters  # nothing half-loaded

    await client.load_adapter("base", "s", a["v1"])
    assert (await client.load_adapter("base", "s", a["v1"])).replaced is False  # retry: no-op
    assert "replace" in await refused(client.load_adapter("base", "s", a["v2"]),
                                      grpc.StatusCode.ALREADY_EXISTS, "name")
    await refused(client.load_adapter("s", "t", a["v1"]), bad, "base_model")  # not a base
    await client.load_adapter("base", "t", a["other"])
    assert "max_adapters=2" in await refused(
        client.load_adapter("base", "u", a["v2"]), grpc.StatusCode.RESOURCE_EXHAUSTED)
    await client.unload_adapter("t")
    await client.load_adapter("base", "u", a["v2"])  # room again


async def test_replace_swaps_weights_and_running_requests_finish_under_the_old(
    tiny_client, tiny_model, tiny_adapters
):
    client = tiny_client
    await client.load_adapter("base", "s", str(tiny_adapters["v1"]))
    # A long generation under v1, alone: what v1 gives for it.
    long = SamplingParams(max_new_tokens=300, min_new_tokens=300)
    (alone,) = await client.generate(PROMPT, long, model="s")

    final: SampleResult | None = None
    swapped_at = finished_at = 0.0
    loop = asyncio.get_running_loop()

    async def run_long() -> None:
        nonlocal final, finished_at
        async for event in client.generate_stream(PROMPT, long, model="s"):
            if isinstance(event, SampleResult):
                final, finished_at = event, loop.time()

    task = asyncio.create_task(run_long())
    await asyncio.sleep(0.05)  # under way
    info = await client.load_adapter("base", "s", str(tiny_adapters["v2"]), replace=True)
    swapped_at = loop.time()
    assert info.replaced
    after = await greedy(client, "s", 24)
    await task
    assert swapped_at < finished_at  # the swap happened while it ran ...
    assert final is not None and final.token_ids == alone.token_ids  # ... under v1 throughout
    assert after == Reference(tiny_model, tiny_adapters["v2"]).generate(PROMPT, 24)
    assert after != Reference(tiny_model, tiny_adapters["v1"]).generate(PROMPT, 24)
    (scored,) = await client.score([(PROMPT, COMPLETION)], model="s")  # no stale cache
    expected = Reference(tiny_model, tiny_adapters["v2"]).logprobs(PROMPT, COMPLETION)
    assert scored.nll_sum == pytest.approx(-sum(expected), abs=1e-3)


async def test_adapter_file_contents_are_checked_not_trusted(tiny_client, tiny_adapters,
                                                             tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (broken / name).write_bytes((tiny_adapters["v1"] / name).read_bytes())
    config = json.loads((broken / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    assert "DoRA" in await refused(tiny_client.load_adapter("base", "d", str(broken)),
                                   grpc.StatusCode.INVALID_ARGUMENT, "path")
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    (broken / "adapter_config.json").write_text(json.dumps(config))
    await refused(tiny_client.load_adapter("base", "d", str(broken)),
                  grpc.StatusCode.INVALID_ARGUMENT, "path")


async def test_a_client_of_replicas_loads_and_unloads_on_every_one(
    tiny_server, tiny_model, tiny_adapters
):
    other = await start(tiny_model, "hf", max_adapters=1)
    try:
        ports = [tiny_server.port, other.port]
        addresses = ",".join(f"127.0.0.1:{p}" for p in ports)
        async with TeacherClient(addresses, retries=0) as client:
            await client.load_adapter("base", "s", str(tiny_adapters["v1"]))
            for port in ports:  # each replica serves it, with the same weights
                async with TeacherClient(f"127.0.0.1:{port}", retries=0) as one:
                    assert "s" in {m.name for m in await one.list_models()}
                    assert await greedy(one, "s", 8) == Reference(
                        tiny_model, tiny_adapters["v1"]).generate(PROMPT, 8)
            await client.unload_adapter("s")
            for port in ports:
                async with TeacherClient(f"127.0.0.1:{port}", retries=0) as one:
                    await refused(greedy(one, "s"), grpc.StatusCode.NOT_FOUND, "model")
    finally:
        await other.drain_and_stop()


class AdapterScriptedEngine(ScriptedEngine):
    """The scripted engine on the tiny model's config, recording adapter loads and frees
    and which adapter each request ran under."""

    def __init__(self, base_dir: Path, delay_s: float):
        super().__init__(["abcdefgh"], delay_s)
        self.base_dir = str(base_dir)
        self.config = EngineSettings(max_adapters=1, max_lora_rank=16)
        self.loaded: list[str] = []
        self.freed: list[str] = []

    def info(self):
        return dataclasses.replace(super().info(), source=self.base_dir)

    async def load_adapter(self, adapter) -> None:
        self.loaded.append(adapter.key)

    async def unload_adapter(self, key: str) -> None:
        self.freed.append(key)


async def test_a_replaced_version_is_freed_after_its_last_request(tiny_model, tiny_adapters):
    engine = AdapterScriptedEngine(tiny_model, delay_s=0.3)
    service = TeacherService([ModelHost("base", engine, 64)])
    await service.start()
    a = {k: str(v) for k, v in tiny_adapters.items()}
    await service.load_adapter("base", "s", a["v1"])

    async def run() -> str:
        return "".join([e.text async for e in service.generate("s", "hi", SamplingParams(
            seed=0)) if isinstance(e, SampleResult)])

    running = asyncio.create_task(run())
    await asyncio.sleep(0.1)  # admitted under the first version
    assert (await service.load_adapter("base", "s", a["v2"], replace=True)).replaced
    assert engine.freed == []  # the first version still runs a request
    # One retired version per adapter slot: another swap must wait for it.
    with pytest.raises(ResourceExhausted):
        await service.load_adapter("base", "s", a["other"], replace=True)
    assert await running == "abcdefgh"
    await asyncio.sleep(0)  # the release runs as a task once the request ends
    assert engine.freed == [engine.loaded[0]]
    await service.load_adapter("base", "s", a["other"], replace=True)
    assert engine.freed == engine.loaded[:2]  # the idle second version: freed at once
    assert [r.adapter for r in engine.requests] == [engine.loaded[0]]
    await service.unload_adapter("s")
    assert engine.freed == engine.loaded
    with pytest.raises(NotFound):
        service.host("s")


# ---------------------------------------------------------------- slow: smollm2, both engines

ENGINE_PARAMS = ["hf"] + ([pytest.param("vllm", marks=pytest.mark.vllm)] if HAS_VLLM else [])


@pytest.fixture(scope="module")
def smol_adapters(test_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("smol-adapters")
    # B scaled down: outputs clearly differ from the base's, yet stay peaked enough that
    # greedy choices do not hinge on rounding (vLLM's LoRA kernels vs peft).
    return {
        "v1": make_lora(test_model_dir, root / "v1", seed=1, r=8, b_scale=0.05),
        "v2": make_lora(test_model_dir, root / "v2", seed=2, r=8, b_scale=0.05),
        "rank16": make_lora(test_model_dir, root / "rank16", seed=3, r=16, b_scale=0.05),
    }


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINE_PARAMS)
async def test_smollm_adapter_on_each_engine(engine, test_model_dir, smol_adapters):
    server = await start(test_model_dir, engine, max_adapters=2, max_lora_rank=8)
    try:
        async with TeacherClient(f"127.0.0.1:{server.port}", retries=0) as client:
            info = await client.load_adapter("base", "student", str(smol_adapters["v1"]))
            assert (info.base_model, info.rank) == ("base", 8)
            listed = {m.name: m for m in await client.list_models()}
            assert listed["student"].base_model == "base"
            assert listed["student"].engine == engine

            ref = Reference(test_model_dir, smol_adapters["v1"])
            under = await greedy(client, "student", 16)
            assert under == ref.generate(PROMPT, 16)
            (scored,) = await client.score([(PROMPT, COMPLETION)], model="student",
                                           return_tokens=True)
            assert scored.logprobs == pytest.approx(ref.logprobs(PROMPT, COMPLETION), abs=2e-3)
            # The adapter is applied: the base scores the same tokens otherwise (the small
            # B keeps greedy text unchanged, so the log-probs are what tell them apart).
            (plain,) = await client.score([(PROMPT, COMPLETION)], model="base",
                                          return_tokens=True)
            assert max(abs(a - b) for a, b in zip(scored.logprobs, plain.logprobs,
                                                   strict=True)) > 0.05

            replaced = await client.load_adapter("base", "student", str(smol_adapters["v2"]),
                                                 replace=True)
            assert replaced.replaced and replaced.revision != info.revision
            assert await greedy(client, "student", 16) == Reference(
                test_model_dir, smol_adapters["v2"]).generate(PROMPT, 16)

            await refused(client.load_adapter("base", "big", str(smol_adapters["rank16"])),
                          grpc.StatusCode.INVALID_ARGUMENT, "rank")
            await client.unload_adapter("student")
            await refused(greedy(client, "student"), grpc.StatusCode.NOT_FOUND, "model")
            assert len(await greedy(client, "base", 4)) == 4  # the base serves on
    finally:
        await server.drain_and_stop()
