"""Paper-world rewards offline: PickScore and CLIPScore on a tiny random CLIP saved to disk and loaded
through the real loading path; HPSv3 / ImageReward / UnifiedReward refuse clearly when not set up."""

from __future__ import annotations

import http.server
import json
import threading

import pytest
import torch

from diversegrpo.registry import build_reward
from diversegrpo.weights import ModelNotFound
from paper_fixtures import save_tiny_clip

PROMPTS = ["a red cat", "a blue dog"]


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def images(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), generator=g) / 255.0)  # 8-bit exact, like saved PNGs


def reference_pickscore(model_dir, processor_dir, imgs, prompts):
    """PickScore as its authors compute it: uint8 PIL images (Flow-GRPO's conversion), the processor on
    them, get_*_features, logit_scale * cos."""
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    model, processor = AutoModel.from_pretrained(model_dir), AutoProcessor.from_pretrained(processor_dir)
    u8 = (imgs * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with torch.no_grad():
        pix = processor(images=[Image.fromarray(a) for a in u8], return_tensors="pt").pixel_values
        tok = processor(text=prompts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
        i = model.visual_projection(model.vision_model(pixel_values=pix).pooler_output)
        t = model.text_projection(
            model.text_model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).pooler_output
        )
        i, t = i / i.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)
        return model.logit_scale.exp() * (i * t).sum(-1)


def test_pickscore_matches_the_reference_computation(clip_dirs):
    model_dir, processor_dir = clip_dirs
    reward = build_reward({"kind": "pickscore", "model": str(model_dir), "processor": str(processor_dir)})
    imgs = images()
    scores = reward(imgs, PROMPTS)
    assert scores.shape == (2,) and scores.dtype == torch.float32
    torch.testing.assert_close(
        scores, reference_pickscore(model_dir, processor_dir, imgs, PROMPTS) / 26, atol=1e-4, rtol=1e-4
    )
    assert scores[0] != scores[1]
    # a prompt changes the score, and chunking changes nothing
    assert reward(imgs, ["a green painting"] * 2)[0] != scores[0]
    reward.batch_size = 1
    torch.testing.assert_close(reward(imgs, PROMPTS), scores)


def test_pickscore_matches_the_reference_on_unquantised_odd_sized_images(clip_dirs):
    """Float images (not 8-bit exact) of odd, non-square size: the reward quantises and resizes as the
    reference does (pixel-level equality: tests/test_preprocessing.py)."""
    model_dir, processor_dir = clip_dirs
    reward = build_reward({"kind": "pickscore", "model": str(model_dir), "processor": str(processor_dir)})
    imgs = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(3))
    expected = reference_pickscore(model_dir, processor_dir, imgs, PROMPTS) / 26
    torch.testing.assert_close(reward(imgs, PROMPTS), expected, atol=1e-6, rtol=1e-6)


def test_pickscore_resizes_larger_images(clip_dirs):
    model_dir, processor_dir = clip_dirs
    reward = build_reward({"kind": "pickscore", "model": str(model_dir), "processor": str(processor_dir)})
    big = torch.nn.functional.interpolate(images(), scale_factor=4, mode="nearest")  # (2, 3, 128, 128)
    assert torch.isfinite(reward(big, PROMPTS)).all()
    with pytest.raises(ValueError, match="prompts"):
        reward(big, PROMPTS[:1])


def test_clipscore_is_clipped_cosine(clip_dirs):
    model_dir, processor_dir = clip_dirs
    spec = {"kind": "clipscore", "model": str(model_dir), "processor": str(processor_dir), "weight": 2.5}
    reward = build_reward(spec)
    imgs = images()
    ref = reference_pickscore(model_dir, processor_dir, imgs, PROMPTS) / reward.model.logit_scale.exp()
    torch.testing.assert_close(reward(imgs, PROMPTS), 2.5 * ref.clamp_min(0), atol=1e-4, rtol=1e-4)


def test_missing_weights_name_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFound, match="huggingface-cli download yuvalkirstain/PickScore_v1|laion/CLIP"):
        build_reward({"kind": "pickscore"})
    with pytest.raises(ModelNotFound, match="huggingface-cli download openai/clip-vit-large-patch14"):
        build_reward({"kind": "clipscore"})


@pytest.mark.parametrize("kind, package", [("hpsv3", "hpsv3"), ("imagereward", "image-reward")])
def test_package_rewards_say_what_is_missing(kind, package):
    with pytest.raises((ImportError, ModelNotFound), match=f"pip install {package}|huggingface-cli download"):
        build_reward({"kind": kind})


def test_unifiedreward_needs_an_endpoint():
    from diversegrpo.rewards.unifiedreward import EndpointNotConfigured

    with pytest.raises(EndpointNotConfigured, match="endpoint"):
        build_reward({"kind": "unifiedreward"})


def test_unifiedreward_talks_openai_chat_completions():
    """A local stand-in server: checks the request carries the image and caption, answers a score."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            text = body["messages"][0]["content"][1]["text"]
            answer = "Alignment good.\nFinal Score: 4.5" if "cat" in text else "I cannot say."
            data = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = {"kind": "unifiedreward", "endpoint": f"http://127.0.0.1:{server.server_port}/v1", "model": "ur"}
        scores = build_reward(spec)(images(), PROMPTS)
    finally:
        server.shutdown()
    assert scores[0] == 4.5 and torch.isnan(scores[1])  # no score in the answer: NaN, not a silent 0
    path, body = seen[0]
    assert path == "/v1/chat/completions" and body["model"] == "ur"
    assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
