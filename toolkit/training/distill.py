"""Knowledge distillation: a teacher model's start/end logits as soft targets for the student's windows.

The teacher may tokenise differently (MPNet's <s> q </s></s> c </s> for a MiniLM student), so its logits are
carried over through the context's characters. Each student window takes the teacher window of the same
question whose context overlaps its own most; a student token gets the teacher's start logit where a teacher
token starts at the same character, the teacher's end logit where one ends at the same character, and the
[CLS] position the teacher's no-answer logits. Positions with no counterpart (question, separators, padding,
a token boundary the teacher does not share) get no target mass: -inf.

The loss (QATrainer.compute_loss) mixes the gold cross-entropy with the KL divergence from the teacher's
softened distributions (Hinton et al., 2015): (1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T).
"""

import sys
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from toolkit.features import Features
from toolkit.inference.engine import Engine
from toolkit.inference.padding import feature_logits

TARGET_KEYS = ("teacher_start", "teacher_end")
CHUNK = 512  # questions per teacher call: progress to watch, bounded memory


class DistillError(ValueError):
    """Distillation settings that cannot work; the message says why."""


@dataclass
class DistillSettings:
    alpha: float = 0.5  # weight of the teacher's term; 1 - alpha stays on the gold labels
    temperature: float = 2.0

    def check(self) -> None:
        if not 0 < self.alpha <= 1:
            raise DistillError(f"--distill-alpha must be in (0, 1], not {self.alpha}")
        if not self.temperature > 0:
            raise DistillError(f"--distill-temperature must be above 0, not {self.temperature}")


def context_span(offsets: list[tuple[int, int] | None]) -> tuple[int, int]:
    """First and last character of the context a window holds; (0, 0) when it holds none."""
    spans = [o for o in offsets if o is not None]
    return (spans[0][0], spans[-1][1]) if spans else (0, 0)


def best_window(span: tuple[int, int], teacher_spans: list[tuple[int, tuple[int, int]]]) -> int:
    """The teacher window (index) whose context overlaps this span most; the first on ties."""
    return max(teacher_spans, key=lambda ts: min(span[1], ts[1][1]) - max(span[0], ts[1][0]))[0]


def carry_over(student_offsets, teacher_offsets, teacher_start: np.ndarray,
               teacher_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One student window's target logits from one teacher window, through character positions."""
    starts = {o[0]: t for t, o in enumerate(teacher_offsets) if o is not None}
    ends = {o[1]: t for t, o in enumerate(teacher_offsets) if o is not None}
    start = np.full(len(student_offsets), -np.inf, dtype=np.float32)
    end = np.full(len(student_offsets), -np.inf, dtype=np.float32)
    start[0], end[0] = teacher_start[0], teacher_end[0]  # [CLS] / <s>: no answer in this window
    for s, o in enumerate(student_offsets):
        if o is None or o[0] == o[1]:
            continue
        if o[0] in starts:
            start[s] = teacher_start[starts[o[0]]]
        if o[1] in ends:
            end[s] = teacher_end[ends[o[1]]]
    return start, end


def targets(teacher: Engine, questions: list[str], contexts: list[str],
            student: Features) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per student window, the teacher's start and end target logits (see the module docstring).

    A question asked twice (a source repeated with ?repeat=K) is run through the teacher once."""
    unique: dict[tuple[str, str], int] = {}
    for q, c in zip(questions, contexts):
        unique.setdefault((q, c), len(unique))
    pairs = list(unique)
    per_pair: list[list[tuple[list, np.ndarray, np.ndarray]]] = [[] for _ in pairs]
    for first in tqdm(range(0, len(pairs), CHUNK), desc="teacher", unit="chunk", file=sys.stderr):
        chunk = pairs[first:first + CHUNK]
        features = teacher.features([q for q, _ in chunk], [c for _, c in chunk])
        start, end = feature_logits(teacher.served().predictor, features, teacher.tokenizer.pad_token_id,
                                    teacher.settings)
        for i, example in enumerate(features.example_index):
            per_pair[first + example].append((features.offsets[i], start[i], end[i]))
    out_start, out_end = [], []
    for i, offsets in enumerate(student.offsets):
        example = student.example_index[i]
        windows = per_pair[unique[(questions[example], contexts[example])]]
        chosen = best_window(context_span(offsets), [(w, context_span(o)) for w, (o, _, _) in enumerate(windows)])
        start, end = carry_over(offsets, *windows[chosen])
        out_start.append(start)
        out_end.append(end)
    return out_start, out_end


def pad_targets(rows: list[np.ndarray], length: int) -> torch.Tensor:
    """Target logits of a batch, padded with -inf (no mass) to the batch's padded length."""
    out = torch.full((len(rows), length), float("-inf"))
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.from_numpy(row)
    return out


class DistillCollator:
    """The usual padding collator, with the teacher's target logits padded alongside the inputs."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, rows: list[dict]) -> dict:
        if TARGET_KEYS[0] not in rows[0]:
            return self.collator(rows)
        kept = [{k: v for k, v in row.items() if k not in TARGET_KEYS} for row in rows]
        batch = self.collator(kept)
        length = batch["input_ids"].shape[1]
        for key in TARGET_KEYS:
            batch[key] = pad_targets([row[key] for row in rows], length)
        return batch


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over the batch of KL(teacher_T || student_T), summed over the positions the teacher gives mass."""
    log_target = torch.log_softmax(teacher_logits / temperature, dim=-1)
    target = log_target.exp()
    log_student = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    mass = target > 0
    kl = torch.where(mass, target * (log_target - log_student), torch.zeros_like(target))
    return kl.sum(dim=-1).mean()


def distill_loss(outputs, teacher_start: torch.Tensor, teacher_end: torch.Tensor,
                 settings: DistillSettings) -> torch.Tensor:
    """(1 - alpha) * the model's gold loss + alpha * T^2 * the mean of the start and end KL terms."""
    t = settings.temperature
    soft = (soft_loss(outputs.start_logits, teacher_start, t) + soft_loss(outputs.end_logits, teacher_end, t)) / 2
    return (1 - settings.alpha) * outputs.loss + settings.alpha * t * t * soft
