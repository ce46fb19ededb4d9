"""Retrieval-augmented generation (chapter 12): the shipped RAG model and its no-context
baseline (`mmcourse.recipes.retrieval`) on the held-out colour × shape pairs, on the course
device (`mmcourse.device()`; one thread on the CPU).

recall_at_1 / recall_at_4: share of the 30 held-out captions with a memory image of that caption
among the top 1 / 4 retrieved by CLIP (caption vector against the 20,000 memory image vectors).
heldout_judge_no_retrieval: judge "all" (colour, shape and position right) of the baseline on
PER_CAPTION samples of each held-out caption for each of SEEDS (`samples_per_row` in all, the
rates pooled), prompt [BOS] caption [BOI];
heldout_judge_retrieval: the RAG model with the caption's best memory pair as context;
heldout_judge_random_context: the RAG model with a random memory pair (the control);
heldout_judge_rag_no_context: the RAG model without context; rag_gain_points: 100 ×
(retrieval − no retrieval). The RAG system with its relevance gate (a context whose image's CLIP
cosine with the query caption is below `gate`, set on training captions, is left out):
heldout_judge_retrieval_gated / heldout_judge_random_context_gated, gated_retrieved_used /
gated_random_used (the share of contexts let through), gated_gain_points.

Image → caption, the captioning pair (data/retrieval_rag_captions.pt and its baseline) on fresh
renders of the held-out captions, PER_CAPTION of each per seed, pooled the same way:
image_recall_at_1 / image_recall_at_4 (a memory image of the query's caption among the top 1 / 4
by CLIP image vector); heldout_caption_retrieval / heldout_caption_random_context /
heldout_caption_rag_no_context / heldout_caption_no_retrieval: the share of greedy captions equal
to the truth word for word, with the image's best memory pair, a random pair, no context, and
from the baseline; caption_gain_points; caption_gate and the gated rows as above
(caption_… keys). eval_s: both directions' evaluations' time (on a GPU after an untimed warm-up,
the device synchronized around the clock).
"""

from __future__ import annotations

from _timing import timed, warm_up

import mmcourse
from mmcourse import recipes
from mmcourse.env import compute_threads
from mmcourse.recipes import retrieval as retrieval_recipe
from mmcourse.recipes.retrieval import PAIRS

PER_CAPTION = 30  # 900 samples a row and seed
SEEDS = (0, 1, 2, 3)  # pooled: 3,600 samples a row (one seed's 300 swing by ±4 points)


def run() -> dict[str, float]:
    dev = mmcourse.device()
    with compute_threads(dev):
        mem = retrieval_recipe.memory()
        measures = {"caption_image": retrieval_recipe.measure,
                    "image_caption": retrieval_recipe.measure_captions}  # fmt: skip
        pairs = [(measures[d], [recipes.load(n, device=dev) for n in PAIRS[d]]) for d in measures]
        warm_up(lambda: [m(*models, mem, 1, device=dev) for m, models in pairs], dev)

        def pooled() -> dict[str, float]:
            out = {}
            for measure, models in pairs:
                runs = [measure(*models, mem, PER_CAPTION, seed, device=dev) for seed in SEEDS]
                out |= {key: sum(r[key] for r in runs) / len(runs) for key in runs[0]}
            return out

        scores, seconds = timed(pooled, dev)
    scores.pop("eval_seconds")
    return scores | {"samples_per_row": PER_CAPTION * 30 * len(SEEDS), "eval_s": seconds}
