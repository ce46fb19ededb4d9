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
python -m mmcourse.train retrieval   # data/retrieval_rag.pt, retrieval_baseline.pt: chapter 12's
                                     # RAG model and its no-context baseline (≈ 20 min)
python -m mmcourse.train retrieval_captions # data/retrieval_rag_captions.pt,
                                     # retrieval_baseline_captions.pt: the image → caption
                                     # pair (≈ 20 min)
python -m mmcourse.train scaling     # data/scaling_law.json: chapter 11's scaling-law runs, 6
                                     # sizes × 4 budgets and each direction alone (≈ 20 min)

Every training command runs unchanged on several processes (chapter 11): torchrun starts the
ranks, each draws its share of every batch, DDP averages their gradients; rank 0 alone shows
progress, prints and writes the files, which are the same format as a one-process run's.

torchrun --nproc_per_node=2 -m mmcourse.train judge        # 2 ranks on this machine (gloo on
                                                          # the CPU, NCCL between GPUs)
torchrun --nproc_per_node=2 -m mmcourse.train ar --fsdp    # the transformers (ar, ar_noisy,
                                                          # unified, transfusion): FSDP2 shards
torchrun --nnodes=2 --nproc_per_node=4 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
         -m mmcourse.train unified                         # the same line on each machine
python -m mmcourse.train ar --resume runs/ar               # keep the training state under
                                                          # runs/ar every 100 steps; the same
                                                          # line after a stop carries on
A rank that dies or hangs makes the others stop with an error after --timeout seconds (600).
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from mmcourse import distributed, recipes
from mmcourse.trainer import resuming

TARGETS = {**recipes.REBUILDS}
FSDP_TARGETS = ("ar", "ar_noisy", "unified", "transfusion")  # the transformers' rebuilds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mmcourse.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 instead of DDP (transformers)")
    parser.add_argument("--resume", metavar="DIR", help="keep and resume the training state")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for a rank")
    args = parser.parse_args(argv)
    if args.fsdp and args.target not in FSDP_TARGETS:
        raise ValueError(
            f"FSDP2 is offered for the transformer models ({', '.join(FSDP_TARGETS)}); "
            f"got {args.target}"
        )
    torch.use_deterministic_algorithms(True)
    distributed.init(args.timeout)
    try:
        options = {"fsdp": True} if args.fsdp else {}
        with resuming(args.resume) if args.resume else contextlib.nullcontext():
            summary = TARGETS[args.target](args.seed, **options)
    finally:
        distributed.close()
    if summary and distributed.is_main():
        print(summary)


if __name__ == "__main__":
    main()
