"""The sample stage draws both caption splits in one job: the held-out captions exactly as a file of them alone
would hold them, then the first training captions with noise of their own, one `split` column."""

from pathlib import Path

import pandas as pd
import torch

from diversegrpo.io import png_bytes
from diversegrpo.registry import build_backbone
from diversegrpo.sampling import sample_images
from diversegrpo.stages.sample import SampleSettings, sample_stage

EVAL = ["a red disc", "a blue cross", "a green frame"]
TRAIN = ["a red square", "a blue disc", "a green cross", "a yellow frame"]


def captions(tmp_path: Path) -> dict[str, str]:
    out = {}
    for split, prompts in (("eval", EVAL), ("train", TRAIN)):
        out[split] = str(tmp_path / f"{split}.parquet")
        pd.DataFrame({"prompt_id": range(len(prompts)), "prompt": prompts, "split": split}).to_parquet(out[split])
    return out


def test_both_splits_in_one_file_eval_images_as_alone(tiny_toy_dir, tmp_path):
    spec = {"kind": "toy", "path": str(tiny_toy_dir), "eval_steps": 2, "guidance_scale": 1.0,
            "lora": {"rank": 2, "alpha": 2}}
    out = tmp_path / "images.parquet"
    settings = SampleSettings(backbone=spec, rewards={"colour": {"kind": "toy_colour"}},
                              sample={"images_per_prompt": 2, "max_prompts": 2}, seed=3, device="cpu", torch_threads=1)
    sample_stage(settings, None, captions(tmp_path), str(out))
    table = pd.read_parquet(out)
    assert table.split.tolist() == ["eval"] * 4 + ["train"] * 4
    assert table.prompt.tolist() == [p for p in EVAL[:2] + TRAIN[:2] for _ in range(2)]  # the first in file order
    assert table["index"].tolist() == [0, 1] * 4 and (table.seed == 3).all() and table.reward_colour.notna().all()

    backbone = build_backbone(spec, "cpu")
    eval_prompts, train_prompts = table.prompt[:4].tolist(), table.prompt[4:].tolist()
    alone = sample_images(backbone, eval_prompts, 2, 1.0, seed=3)
    assert table.image[:4].tolist() == [png_bytes(im) for im in alone]  # the eval images of a one-split file
    after = sample_images(backbone, train_prompts, 2, 1.0, seed=3, offset=4)
    assert table.image[4:].tolist() == [png_bytes(im) for im in after]
    # ... drawn from the noise after the eval images', not from theirs again
    assert not torch.equal(after, sample_images(backbone, train_prompts, 2, 1.0, seed=3))


def test_noise_of_an_offset_continues_one_longer_list(tiny_toy_dir):
    backbone = build_backbone({"kind": "toy", "path": str(tiny_toy_dir)}, "cpu")
    prompts = EVAL + TRAIN[:1]
    whole = sample_images(backbone, prompts, 2, 1.0, seed=5, batch_size=3)
    parts = [sample_images(backbone, prompts[:2], 2, 1.0, seed=5),
             sample_images(backbone, prompts[2:], 2, 1.0, seed=5, offset=2)]
    assert torch.allclose(whole, torch.cat(parts), atol=1e-6)
