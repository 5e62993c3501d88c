"""A GGUF file converts once to a cached HF folder: its metadata parsed once (gguf's reader is most
of a conversion's time for a large vocabulary), and one conversion when two want it at once."""

import threading

import torch

from tunesmith.model import resolve as resolving


def tiny_gguf(tmp_path, tiny_model_dir):
    from tunesmith.export.exporter import export

    export(str(tiny_model_dir), tmp_path / "gguf", format="gguf", quant="f16")
    [file] = (tmp_path / "gguf").glob("*.gguf")
    return file


def test_a_conversion_parses_the_file_s_metadata_once(tmp_path, monkeypatch, tiny_model_dir):
    import gguf

    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    file = tiny_gguf(tmp_path, tiny_model_dir)
    parses = []
    original = gguf.GGUFReader.__init__
    monkeypatch.setattr(gguf.GGUFReader, "__init__", lambda self, *a, **k: parses.append(a) or original(self, *a, **k))
    folder = resolving.resolve(str(file)).path
    assert len(parses) == 1, parses  # transformers alone would parse it three times, the source note once more
    assert resolving.resolve(str(file)).path == folder and len(parses) == 1  # cached: not read again
    assert isinstance(gguf.GGUFReader, type)  # gguf's own reader back in place
    from transformers import AutoModelForCausalLM

    source = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    for name, tensor in AutoModelForCausalLM.from_pretrained(folder).state_dict().items():
        assert torch.equal(tensor, source[name].half().float() if source[name].ndim > 1 else source[name]), name


def test_two_conversions_of_one_file_at_once_convert_it_once(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    file = tiny_gguf(tmp_path, tiny_model_dir)
    converted, folders = [], []
    original = resolving._convert
    monkeypatch.setattr(resolving, "_convert", lambda *a: converted.append(a) or original(*a))
    start = threading.Barrier(2)

    def convert():
        start.wait()
        folders.append(resolving.convert_gguf(file))

    threads = [threading.Thread(target=convert) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(folders) == 2 and folders[0] == folders[1] and (folders[0] / "model.safetensors").is_file()
    assert len(converted) == 1  # the second waited for the first, then found the folder
    assert [p.name for p in folders[0].parent.iterdir() if p.name.startswith(f".{folders[0].name}-")] == []
