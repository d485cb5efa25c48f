"""The CLI's lean first import of torchvision and open_clip (histovl._lean_imports).

Each case runs in a fresh interpreter: what is measured is what a first import does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
        cwd=cwd, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), str(cwd or REPO)]), **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_lean_open_clip_import_skips_dynamo_timm_transformers_and_leaves_nothing_behind() -> None:
    out = json.loads(_python("""
        import json, sys
        from histovl import _lean_imports as lean
        lean.enable()
        import open_clip, torch
        state = {"loaded": [m for m in ("torch._dynamo", "timm", "transformers") if m in sys.modules],
                 "finder_left": any(isinstance(f, lean._LeanFinder) for f in sys.meta_path),
                 "without": sorted(lean.imported_without("open_clip"))}
        roi = sys.modules["torchvision.ops.roi_align"]
        state["deferred"] = roi.is_compile_supported("cpu")  # loads the real torch._dynamo on demand
        import torch._dynamo.utils as real
        state["real"] = real.is_compile_supported("cpu")
        state["dynamo_type"] = type(sys.modules["torch._dynamo"]).__name__
        state["disable"] = callable(torch._dynamo.disable) and torch.compiler.disable(lambda: 7)() == 7
        print(json.dumps(state))
    """))
    assert out["loaded"] == [] and not out["finder_left"] and out["without"] == ["timm", "transformers"]
    assert out["deferred"] == out["real"] and out["dynamo_type"] == "module" and out["disable"]


def test_plain_imports_when_disabled_or_not_enabled() -> None:
    code = """
        import sys
        from histovl import _lean_imports as lean
        {enable}
        import open_clip
        print(sorted(m for m in ("torch._dynamo", "timm", "transformers") if m in sys.modules))
    """
    assert _python(code.format(enable="")) == "['timm', 'torch._dynamo', 'transformers']"
    assert _python(code.format(enable="lean.enable()"), env={"HISTOVL_PLAIN_IMPORTS": "1"}) == "['timm', 'torch._dynamo', 'transformers']"


def _namespace_snapshot() -> str:
    return """
        import json, sys
        def describe(value):
            return type(value).__name__ if not isinstance(value, (bool, int, float, str, type(None))) else value
        names = sorted(n for n in sys.modules if n == "open_clip" or n.startswith("open_clip."))
        print(json.dumps({n: {k: describe(v) for k, v in vars(sys.modules[n]).items() if not k.startswith("__")}
                          for n in names if sys.modules[n] is not None}))
    """


def test_restore_gives_open_clip_the_namespace_of_a_plain_import() -> None:
    """After `restore_optional_imports` every open_clip module binds the same names, to values of
    the same kinds, as after a plain import (timm, transformers, the HF classes, _has_transformers ...)."""
    plain = json.loads(_python("import open_clip\n" + textwrap.dedent(_namespace_snapshot())))
    lean = json.loads(_python("from histovl import _lean_imports as lean\nlean.enable()\nimport open_clip\n"
                              "lean.restore_optional_imports()\nassert not lean.imported_without()\n"
                              + textwrap.dedent(_namespace_snapshot())))
    assert set(lean) == set(plain)
    assert {n: lean[n] for n in plain} == plain
    assert "NoneType" not in (plain["open_clip.timm_model"]["timm"], plain["open_clip.hf_model"]["transformers"])


@pytest.mark.slow
def test_timm_and_hf_text_towers_build_after_a_lean_import(tmp_path: Path) -> None:
    """BiomedCLIP's layout (timm ViT + BERT text tower) built by histovl's open_clip builder in a
    lean-import process equals the same build in a plain one (same seed: identical features)."""
    from transformers import BertConfig, BertTokenizer

    bert = tmp_path / "tiny-bert"
    BertConfig(vocab_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=64).save_pretrained(str(bert))
    (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijk"]) + "\n")
    BertTokenizer(str(bert / "vocab.txt")).save_pretrained(str(bert))
    cfg = {"embed_dim": 16,
           "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                          "timm_proj": "linear", "image_size": 160},
           "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert), "hf_proj_type": "mlp",
                        "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 16}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    build = """
        import json, sys, torch
        from histovl import _lean_imports as lean
        {enable}
        from histovl.models._open_clip import build_model
        assert ("timm" in sys.modules) == {plain}
        torch.manual_seed(0)
        model = build_model(json.load(open("cfg.json")))
        torch.manual_seed(1)
        with torch.no_grad():
            image = model.encode_image(torch.rand(2, 3, 160, 160))
            text = model.encode_text(torch.randint(0, 16, (2, 16)))
        print(json.dumps([type(model.visual).__name__, type(model.text).__name__, image.tolist(), text.tolist()]))
    """
    lean = json.loads(_python(build.format(enable="lean.enable()", plain=False), cwd=tmp_path))
    plain = json.loads(_python(build.format(enable="", plain=True), cwd=tmp_path))
    assert lean[:2] == ["TimmModel", "HFTextEncoder"] and lean[:2] == plain[:2]
    torch.testing.assert_close(torch.tensor(lean[2]), torch.tensor(plain[2]), rtol=0, atol=0)
    torch.testing.assert_close(torch.tensor(lean[3]), torch.tensor(plain[3]), rtol=0, atol=0)


def test_a_package_that_needs_more_of_dynamo_or_a_blocked_package_imports_as_plain(tmp_path: Path) -> None:
    """Fallbacks, on stand-in packages: an attribute of the torch._dynamo stand-in, a dynamo
    submodule, and an unguarded import of a blocked package all give what a plain import gives."""
    (tmp_path / "needs_attr.py").write_text("import torch\nDISABLE = torch._dynamo.disable\n")
    (tmp_path / "needs_sub.py").write_text("from torch._dynamo.eval_frame import innermost_fn\n")
    pkg = tmp_path / "needs_opt"
    pkg.mkdir()
    (pkg / "guarded.py").write_text("try:\n    import wave\nexcept ImportError:\n    wave = None\n")
    (pkg / "__init__.py").write_text("from . import guarded\nimport wave\n")
    out = json.loads(_python("""
        import json, sys
        from histovl import _lean_imports as lean
        lean.enable({"needs_attr": (), "needs_sub": (), "needs_opt": ("wave",)})
        import needs_attr, needs_sub, needs_opt
        import torch._dynamo
        print(json.dumps({"attr": needs_attr.DISABLE is torch._dynamo.disable,
                          "sub": needs_sub.innermost_fn is torch._dynamo.eval_frame.innermost_fn,
                          "dynamo": type(sys.modules["torch._dynamo"]).__name__,
                          "guarded": needs_opt.guarded.wave is sys.modules["wave"],
                          "finder_left": any(isinstance(f, lean._LeanFinder) for f in sys.meta_path)}))
    """, cwd=tmp_path))
    assert out == {"attr": True, "sub": True, "dynamo": "module", "guarded": True, "finder_left": False}
