"""Rebuild the weights that ship under data/ from their seeds.

python -m mmcourse.train judge       # data/judge.pt, the Shapes judge (3–4 minutes on a 2-core CPU)
python -m mmcourse.train tokenizer   # data/tokenizer.pt, the image tokenizer (2–3 minutes)
python -m mmcourse.train vit         # data/vit_digits.pt, the digits ViT (≈ 15 s)
python -m mmcourse.train clip        # data/clip_shapes.pt, CLIP on Shapes (≈ 15 s)
python -m mmcourse.train captioner   # data/captioner_shapes.pt (run clip first)
python -m mmcourse.train diffusion   # data/diffusion_shapes.pt, diffusion_latent_shapes.pt, then
                                     # diffusion_ddpm_samples.pt (15 min + 1.5 min)
python -m mmcourse.train ddpm_samples # data/diffusion_ddpm_samples.pt alone: DDPM 1000 samples of
                                     # every caption from the shipped pixel model (≈ 1.5 min)
python -m mmcourse.train ar          # data/ar_shapes.pt, ar_shapes_early.pt (step 650) (≈ 20 min)
python -m mmcourse.train ar_noisy    # data/ar_shapes_noisy.pt, 30 % captions mismatched (≈ 25 min)
python -m mmcourse.train video       # data/video_tokenizer.pt, the video tokenizer (≈ 25 min)
python -m mmcourse.train unified     # data/unified_shapes.pt, the tiny Chameleon (≈ 15–20 min)
python -m mmcourse.train transfusion # data/transfusion_shapes.pt, Transfusion (≈ 8 min)
python -m mmcourse.train evaluation_samples # data/evaluation_samples.pt: 450 samples of each
                                     # of chapter 10's seven generators (≈ 9–10 min)
"""

from __future__ import annotations

import argparse

import torch

from mmcourse import recipes

TARGETS = {**recipes.REBUILDS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mmcourse.train", description=__doc__)
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    summary = TARGETS[args.target](args.seed)
    if summary:
        print(summary)


if __name__ == "__main__":
    main()
