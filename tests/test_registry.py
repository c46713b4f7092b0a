"""The registry: duplicates refused, unknown names listed, heavy entries registered lazily on first use."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from retrieval.registry import Registry, UnknownNameError


def test_duplicates_are_refused_and_unknown_names_list_the_known_ones():
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(2)
    with pytest.raises(UnknownNameError, match="unknown thing 'b'; known: a"):
        reg.get("b")


def test_lazy_entries_are_known_at_once_and_imported_on_first_use(monkeypatch):
    reg: Registry[int] = Registry("thing")
    reg.register_lazily(["heavy"], "fake_heavy_module")
    imported = []

    def fake_import(name):
        imported.append(name)
        if name == "fake_heavy_module":
            reg.register("heavy")(42)
        return types.ModuleType(name)

    monkeypatch.setattr("importlib.import_module", fake_import)
    assert "heavy" in reg and reg.names() == ["heavy"] and imported == []
    assert reg.get("heavy") == 42 and imported == ["fake_heavy_module"]
    assert reg.get("heavy") == 42 and imported == ["fake_heavy_module"]  # imported once
    reg.register_lazily(["broken"], "module_that_registers_nothing")
    with pytest.raises(RuntimeError, match="did not register"):
        reg.get("broken")


def test_reading_commands_need_no_torch():
    """The CLI, the collection, the pipeline and the segmenter registry import no torch: `--help`, `stats`,
    `doctor` start fast; torch comes in where a network or a weights file is used."""
    code = "import sys, indexer.cli, indexer.engine, indexer.pipeline, segmentation; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
