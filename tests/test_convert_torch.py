"""``python -m tracer_theory.deep.models.convert_torch``: every expected failure is one line on
stderr naming the argument or path, exit code 2, no traceback; these run in-process without
torch. The conversions themselves need torch and run only where it is installed."""

from __future__ import annotations

import sys
import zipfile

import pytest

from tracer_theory.deep.models.convert_torch import TORCH_EXTRA, main


@pytest.fixture
def zip_file(tmp_path):
    """A file that looks like a torch archive (a zip) without being one."""
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return path


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_missing_source(tmp_path, capsys):
    source = tmp_path / "nope.pt"
    code, err = run(capsys, source, tmp_path / "out.safetensors")
    assert code == 3
    line = one_line(err)
    assert str(source) in line and "does not exist" in line


def test_source_is_a_directory(tmp_path, capsys):
    code, err = run(capsys, tmp_path, tmp_path / "out.safetensors")
    assert code == 3
    assert f"SOURCE {tmp_path} is not a file" in one_line(err)


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint", b"\x89PNG\r\n\x1a\n"])
def test_not_a_torch_file(tmp_path, capsys, content):
    source = tmp_path / "weights.pt"
    source.write_bytes(content)
    code, err = run(capsys, source, tmp_path / "out.safetensors")
    assert code == 3
    line = one_line(err)
    assert str(source) in line and "not a torch file" in line


@pytest.mark.parametrize("name", ["out.pt", "out.safetensors.tmp", "out"])
def test_dest_must_end_in_safetensors(zip_file, tmp_path, capsys, name):
    dest = tmp_path / name
    code, err = run(capsys, zip_file, dest)
    assert code == 3
    line = one_line(err)
    assert f"DEST {dest}" in line and ".safetensors" in line
    assert not dest.exists()


def test_dest_exists_needs_overwrite(zip_file, tmp_path, capsys):
    dest = tmp_path / "out.safetensors"
    dest.write_bytes(b"keep me")
    code, err = run(capsys, zip_file, dest)
    assert code == 3
    line = one_line(err)
    assert str(dest) in line and "--overwrite" in line
    assert dest.read_bytes() == b"keep me"


def test_dest_is_a_directory(zip_file, tmp_path, capsys):
    dest = tmp_path / "folder.safetensors"
    dest.mkdir()
    code, err = run(capsys, zip_file, dest, "--overwrite")
    assert code == 3
    assert f"DEST {dest} is a directory" in one_line(err)


def test_missing_arguments_are_a_usage_error(capsys):
    code = main([])
    err = capsys.readouterr().err
    assert code == 2
    assert "SOURCE" in err and "DEST" in err and "Traceback" not in err


@pytest.mark.parametrize("overwrite", [False, True])
def test_missing_torch_names_the_extra(zip_file, tmp_path, capsys, monkeypatch, overwrite):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    dest = tmp_path / "out.safetensors"
    if overwrite:
        dest.write_bytes(b"old")
    code, err = run(capsys, zip_file, dest, *(["--overwrite"] if overwrite else []))
    assert code == 2
    line = one_line(err)
    assert "needs torch" in line and TORCH_EXTRA in line
    if overwrite:
        assert dest.read_bytes() == b"old"
    else:
        assert not dest.exists()


def test_paths_are_checked_before_torch_is_needed(tmp_path, capsys, monkeypatch):
    """A bad DEST is reported as such even without torch (checked first, no import)."""
    monkeypatch.setitem(sys.modules, "torch", None)
    source = tmp_path / "w.pt"
    source.write_bytes(b"\x80\x02}q\x00.")  # a (legacy) pickle: looks like torch.save's
    code, err = run(capsys, source, tmp_path / "w.bin")
    assert code == 3
    assert "must end in .safetensors" in one_line(err)


# --- with torch ------------------------------------------------------------------------------


def test_converts_a_pickled_state_dict(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    safetensors = pytest.importorskip("safetensors.torch")
    state = {"module.visual.proj": torch.randn(4, 3).T,  # not contiguous
             "module.logit_scale": torch.tensor(4.6, dtype=torch.float16),
             "module.visual.conv1.weight": torch.randn(2, 3, 1, 1, dtype=torch.bfloat16)}
    source = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": state}, source)
    dest = tmp_path / "sub" / "out.safetensors"
    code, err = run(capsys, source, dest)
    assert code == 0, err
    back = safetensors.load_file(str(dest))
    assert sorted(back) == ["logit_scale", "visual.conv1.weight", "visual.proj"]
    for key, value in state.items():
        got = back[key.removeprefix("module.")]
        assert got.dtype == value.dtype and torch.equal(got, value)


def test_a_state_dict_without_tensors(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    source = tmp_path / "empty.pt"
    torch.save({"state_dict": {"epoch": 1}}, source)
    code, err = run(capsys, source, tmp_path / "out.safetensors")
    assert code == 3
    assert f"SOURCE {source} holds no tensors" in one_line(err)


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")  # script and save
def test_converts_a_torchscript_archive(tmp_path, capsys):
    """OpenAI's release layout: TorchScript, float16, with three size entries (dropped), and a
    causal mask buffer that TorchScript keeps (dropped too)."""
    torch = pytest.importorskip("torch")
    safetensors = pytest.importorskip("safetensors.torch")

    class Visual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Parameter(torch.randn(3, 2))
            self.register_buffer("attn_mask", torch.full((2, 2), float("-inf")).triu(1),
                                 persistent=False)

        def forward(self, x):
            return x @ self.proj

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = Visual()
            self.logit_scale = torch.nn.Parameter(torch.tensor(4.6))
            for key, value in (("input_resolution", 224), ("context_length", 77),
                               ("vocab_size", 49408)):
                self.register_buffer(key, torch.tensor(value))

        def forward(self, x):
            return self.visual(x) * self.logit_scale

    model = Model()
    source = tmp_path / "ViT-tiny.pt"
    torch.jit.save(torch.jit.script(model).half(), str(source))
    dest = tmp_path / "out.safetensors"
    code, err = run(capsys, source, dest)
    assert code == 0, err
    back = safetensors.load_file(str(dest))
    assert sorted(back) == ["logit_scale", "visual.proj"]
    assert back["visual.proj"].dtype == torch.float16
    assert torch.equal(back["visual.proj"], model.visual.proj.detach().half())


def test_not_a_clip_state_dict(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    source = tmp_path / "hf.pt"
    torch.save({"vision_model.embeddings.patch_embedding.weight": torch.ones(1)}, source)
    code, err = run(capsys, source, tmp_path / "out.safetensors")
    assert code == 3
    line = one_line(err)
    assert str(source) in line and "'visual.*'" in line
