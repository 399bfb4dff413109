"""Tests for workbench.model.text: templates, vocabularies, encoders, the released embeddings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harmonize.errors import HarmonizeError
from harmonize.taxonomy import class_names
from workbench.model.text import (
    DEFAULT_TEMPLATE,
    ORIGINAL_ENCODER_ID,
    TEMPLATES,
    TextEncoder,
    TextVocabulary,
    build_vocabulary,
    import_original_vocabulary,
    orthonormal_projection,
    render_prompts,
)

REPO = Path(__file__).resolve().parents[3]


class FakeEncoder:
    """Deterministic encoder: row = seeded noise from the prompt's bytes (tests provenance plumbing)."""

    encoder_id = "fake-encoder"
    weights_id = "none"

    def encode(self, prompts):
        return np.stack(
            [np.random.default_rng(list(p.encode())).standard_normal(512) for p in prompts]
        ).astype(np.float32)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("V1", "A computerized tomography of a Liver."),
        ("V2", "There is Liver in this computerized tomography."),
        ("V3", "This computerized tomography has a Liver."),
        ("V4", "A photo of a Liver."),
    ],
)
def test_templates_render_like_the_reference_table(
    template: str, expected: str, shared_reference: Path
) -> None:
    import json

    table = json.loads((shared_reference / "universal_model_tables.json").read_text())["prompt_templates"]
    assert table[template].replace("[CLS]", "Liver") == expected
    assert render_prompts(["Liver"], template) == (expected,)
    assert TEMPLATES[template].format("Liver") == expected


def test_unknown_template_is_refused() -> None:
    with pytest.raises(ValueError, match="V9"):
        render_prompts(["Liver"], "V9")


@pytest.mark.parametrize(
    ("names", "prompt0"),
    [
        (None, "A computerized tomography of a Spleen."),
        (["kidney_left"], "A computerized tomography of a Left Kidney."),
        (["new_organ_x"], "A computerized tomography of a new organ x."),
    ],
)
def test_build_vocabulary_prompts_and_provenance(names, prompt0: str) -> None:
    enc = FakeEncoder()
    assert isinstance(enc, TextEncoder)
    vocab = build_vocabulary(enc, names)
    n = 32 if names is None else len(names)
    assert vocab.embeddings.shape == (n, 512) and vocab.embeddings.dtype == np.float32
    assert vocab.prompts[0] == prompt0
    assert vocab.template_id == DEFAULT_TEMPLATE
    assert vocab.encoder_id == "fake-encoder"
    np.testing.assert_array_equal(vocab.embeddings[0], enc.encode([prompt0])[0])


def _vocab(n: int = 3, encoder_id: str = "e") -> TextVocabulary:
    rng = np.random.default_rng(n)
    names = tuple(f"c{i}" for i in range(n))
    return TextVocabulary(names, names, "V1", encoder_id, "w", rng.standard_normal((n, 512)))


@pytest.mark.parametrize("change", ["embedding", "names", "encoder", "none"])
def test_sha256_covers_embeddings_names_and_encoder(change: str) -> None:
    import hashlib

    a = _vocab()
    emb = a.embeddings.copy()
    names, enc = a.class_names, a.encoder_id
    if change == "embedding":
        emb[1, 7] += 1e-3
    elif change == "names":
        names = ("c0", "c1", "cX")
    elif change == "encoder":
        enc = "other"
    b = TextVocabulary(names, names, "V1", enc, "w", emb)
    expected = hashlib.sha256(
        emb.astype("<f4").tobytes() + "\n".join(names).encode() + b"\0" + enc.encode()
    ).hexdigest()
    assert b.sha256 == expected
    assert (a.sha256 == b.sha256) == (change == "none")


def test_vocabulary_round_trips_through_dict_and_bytes() -> None:
    a = _vocab(5)
    for b in (TextVocabulary.from_dict(a.to_dict()), TextVocabulary.from_bytes(a.to_bytes())):
        assert b.sha256 == a.sha256 and b.provenance() == a.provenance()
        np.testing.assert_array_equal(b.embeddings, a.embeddings)
    tampered = a.to_dict()
    tampered["class_names"][0] = "zz"
    with pytest.raises(ValueError, match="sha256"):
        TextVocabulary.from_dict(tampered)


@pytest.mark.parametrize(
    ("shape", "prompts", "match"),
    [((3, 384), 3, r"\[3, 512\]"), ((3, 512), 2, "prompts"), ((2, 512), 2, r"\[3, 512\]")],
)
def test_vocabulary_validates_shapes(shape, prompts, match) -> None:
    with pytest.raises(ValueError, match=match):
        TextVocabulary(("a", "b", "c"), ("p",) * prompts, "V1", "e", "w", np.zeros(shape))


def test_import_original_vocabulary(shared_fixtures: Path) -> None:
    import torch

    path = shared_fixtures / "universal_model" / "txt_encoding.pth"
    vocab = import_original_vocabulary(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw.dtype == torch.float16
    assert vocab.class_names == tuple(class_names())
    assert vocab.encoder_id == ORIGINAL_ENCODER_ID and vocab.template_id == "V1"
    assert vocab.prompts[7] == "A computerized tomography of a Arota"
    assert vocab.prompts[24] == "A computerized tomography of a Celiac Truck"
    np.testing.assert_array_equal(vocab.embeddings, raw.float().numpy())
    # Raw CLIP text features are not unit vectors (the release did not normalise them).
    assert 5 < float(np.linalg.norm(vocab.embeddings, axis=1).mean()) < 15


@pytest.mark.parametrize("content", ["missing", "not_a_tensor", "wrong_shape"])
def test_import_original_vocabulary_rejects_bad_files(tmp_path: Path, content: str) -> None:
    import torch

    path = tmp_path / "txt_encoding.pth"
    if content == "not_a_tensor":
        path.write_bytes(b"garbage")
    elif content == "wrong_shape":
        torch.save(torch.zeros(31, 512, dtype=torch.float16), path)
    with pytest.raises(HarmonizeError, match=r"txt_encoding\.pth"):
        import_original_vocabulary(path)


@pytest.mark.parametrize(("n_in", "n_out", "seed"), [(384, 512, 0), (384, 512, 1), (4, 6, 3)])
def test_orthonormal_projection(n_in: int, n_out: int, seed: int) -> None:
    p = orthonormal_projection(n_in, n_out, seed)
    assert p.shape == (n_out, n_in)
    np.testing.assert_allclose(p.T @ p, np.eye(n_in), atol=1e-10)
    np.testing.assert_array_equal(p, orthonormal_projection(n_in, n_out, seed))


@pytest.mark.slow
def test_minilm_offline_encoder() -> None:
    from workbench.model.text import MiniLMOfflineEncoder

    enc = MiniLMOfflineEncoder(seed=0)
    assert "offline stand-in, not CLIP" in enc.encoder_id and "seed=0" in enc.encoder_id
    vocab = build_vocabulary(enc, ["liver", "spleen", "kidney_left", "kidney_right"])
    emb = vocab.embeddings
    assert emb.shape == (4, 512)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Deterministic, and the projection preserves the 384-d geometry: similar prompts stay similar.
    np.testing.assert_allclose(enc.encode(list(vocab.prompts)), emb, atol=1e-6)
    cos = emb @ emb.T
    assert cos[2, 3] > cos[0, 2]  # left vs right kidney closer than liver vs left kidney
    assert MiniLMOfflineEncoder(seed=1).encoder_id != enc.encoder_id


@pytest.mark.slow
def test_clip_encoder_fails_fast_and_clearly_offline() -> None:
    code = (
        "from workbench.model.text import ClipTextEncoder, TextEncoderUnavailable\n"
        "try:\n    ClipTextEncoder()\nexcept TextEncoderUnavailable as e:\n    print('ERR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    # the subprocess timeout only guards against a hang on the network; no timing is asserted
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    msg = out.stdout
    assert msg.startswith("ERR") and "HF_HUB_OFFLINE" in msg and "checkpoint_path=" in msg


@pytest.mark.slow
def test_clip_encoder_loads_a_local_checkpoint(tmp_path: Path) -> None:
    import open_clip
    import torch

    from workbench.model.text import ClipTextEncoder

    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-32", force_quick_gelu=True).eval()
    path = tmp_path / "clip_random.pt"
    torch.save(ref.state_dict(), path)
    enc = ClipTextEncoder(checkpoint_path=path)
    assert enc.weights_id.startswith("file:clip_random.pt sha256:")
    prompts = list(render_prompts(["Liver", "Spleen"]))
    with torch.no_grad():
        expected = ref.encode_text(open_clip.get_tokenizer("ViT-B-32")(prompts)).numpy()
    np.testing.assert_allclose(enc.encode(prompts), expected, rtol=1e-5, atol=1e-5)


def test_clip_encoder_reports_a_missing_local_file(tmp_path: Path) -> None:
    from workbench.model.text import ClipTextEncoder, TextEncoderUnavailable

    with pytest.raises(TextEncoderUnavailable, match="does not exist"):
        ClipTextEncoder(checkpoint_path=tmp_path / "nope.bin")
