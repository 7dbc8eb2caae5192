"""``objective: grpo``: group-relative policy optimisation with report metrics as rewards.

For every prompt of a micro-batch the model samples ``group_size`` answers; each answer is
scored by the stage's rewards (``radixpert.train.rewards``: findings F1 from the rule-based
labeler, BLEU-2, any per-sample evaluate metric, box IoU, format, minus the length and
repetition guards), and its advantage is its reward less the group's mean, over the group's
standard deviation (``scale_rewards``). The loss of an answer is DeepSeekMath's GRPO loss with
one policy update per sample (so the importance ratio is 1 and clipping never acts)::

    loss_t = -exp(logp_t - sg(logp_t)) * A + kl_coef * (exp(ref_t - logp_t) - (ref_t - logp_t) - 1)

averaged over the answer's tokens (up to and including its end-of-turn token), then over the
answers of the step; ``ref_t`` is the log-probability under the stage's starting model (its
adapters switched off when only LoRA trains, else a frozen copy taken before the first step).

Why not TRL's ``GRPOTrainer``: it is a ``transformers.Trainer`` with its own loop, data
collation and checkpoints, so it would bypass the stage trainer's exact resume (data position,
RNG states, early stopping), its one-denominator-per-step loss across processes and its
per-component learning rates, and it does not know radixpert's processor (HCF prompt masks,
Mllama cross-attention masks, letterboxed phantoms). The objective is ~300 lines inside the
project's loop instead, and every guarantee of the loop holds for it.

Sampling is reproducible per example: each prompt's group is sampled alone, with the torch
RNG seeded from (run seed, batch tag, example index) and restored after, so the answers do not
depend on how examples fall into processes or micro-batches, and a resumed run samples what
the uninterrupted one did. Logged (``train/*`` rows of ``metrics.jsonl`` and the trackers;
``reward`` on the progress bar): ``reward`` (mean total), ``reward_std`` (mean within-group
standard deviation), ``reward/<name>`` per component, ``kl``, ``answer_tokens`` (mean answer
length), ``guard/too_long``, ``guard/truncated``, ``guard/repetition``, ``guard/penalty``,
``flat_groups`` (share of groups whose rewards are all equal: no learning signal). Validation
decodes the held-out prompts greedily: ``val_reward`` and ``val_reward/<name>``.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from radixpert.errors import UsageError
from radixpert.train.objectives import BatchLoss, Objective
from radixpert.train.recipe import GRPOSettings, Stage
from radixpert.train.rewards import GUARDS, RewardExample, Rewards

__all__ = ["BatchedPrompts", "GRPOObjective", "GroupPrompts", "sample_seed"]

FAMILIES = ("llava", "mllama", "llava_onevision")


def sample_seed(seed: int, tag: str, index: int) -> int:
    """The seed of one example's sampled group: from the run seed, batch tag and index."""
    key = f"radixpert.grpo:{seed}:{tag}:{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") % 2**63


def _prompt(turns: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    from radixpert.infer.generate import prompt_turns

    return prompt_turns(turns)


class _PromptBuilder:
    """A batch builder of the prompts (turns up to the last human turn) of a micro-batch."""

    takes_keys = True

    def __init__(self, processor: Any) -> None:
        self.processor = processor


class GroupPrompts(_PromptBuilder):
    """Training batch builder: each example's prompt alone (no padding) and its sample seed."""

    def __call__(
        self,
        images: list[list[Path]],
        turns: list[list[dict[str, Any]]],
        keys: Sequence[tuple[int, str]] = (),
        seed: int = 0,
    ) -> dict[str, Any]:
        examples = []
        for paths, conv in zip(images, turns):
            one = [list(paths)] if paths else None
            encoded = self.processor(one, [_prompt(conv)], add_generation_prompt=True)
            encoded.pop("labels", None)
            examples.append(encoded)
        return {
            "index": torch.tensor([i for i, _ in keys], dtype=torch.long),
            "sample_seed": torch.tensor([sample_seed(seed, t, i) for i, t in keys]),
            "examples": examples,
        }


class BatchedPrompts(_PromptBuilder):
    """Validation batch builder: the prompts left-padded into one batch, for greedy decoding."""

    def __call__(
        self,
        images: list[list[Path]],
        turns: list[list[dict[str, Any]]],
        keys: Sequence[tuple[int, str]] = (),
        seed: int = 0,
    ) -> dict[str, Any]:
        everyone = [list(p) for p in images] if any(images) else None
        batch = self.processor(everyone, [_prompt(t) for t in turns], add_generation_prompt=True)
        batch.pop("labels", None)
        batch["index"] = torch.tensor([i for i, _ in keys], dtype=torch.long)
        return batch


def _inner(model: Any) -> Any:
    """The module under a DDP / DeepSpeed wrapper (generation and adapter switches go there)."""
    return getattr(model, "module", model)


def _cast(batch: Mapping[str, torch.Tensor], like: torch.nn.Parameter) -> dict[str, Any]:
    return {
        k: v.to(like.device, like.dtype) if v.is_floating_point() else v.to(like.device)
        for k, v in batch.items()
    }


class GRPOObjective(Objective):
    """``grpo``: see the module doc. Settings: the stage's ``grpo`` (``GRPOSettings``)."""

    name = "grpo"

    def __init__(self) -> None:
        self.settings = GRPOSettings()
        self.rewards: Rewards | None = None
        self.reference: Any = None
        self.reference_mode: str | None = None
        self.train_examples: list[RewardExample] = []
        self.val_examples: list[RewardExample] = []
        self._last: dict[str, float] = {}
        self._sums: dict[str, float] = {}
        self._bar: dict[str, float] = {}

    # ------------------------------------------------------------------ setup

    def prepare(self, model: Any, processor: Any, stage: Stage) -> None:
        family = processor.config.family
        if family not in FAMILIES:
            raise UsageError(
                f"stage {stage.name}: objective grpo supports the {', '.join(FAMILIES)} "
                f"families, not {family!r}"
            )
        self.settings = stage.grpo or GRPOSettings()
        self.rewards = Rewards(self.settings.rewards, self.settings)
        self.tokenizer = processor.tokenizer
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # A sampled image token would be taken for an image placeholder in the loss's forward.
        image_token = self.tokenizer.convert_tokens_to_ids(processor.config.image_token)
        self.suppress = [image_token] if isinstance(image_token, int) else []
        self.reference, self.reference_mode = None, None
        if self.settings.kl_coef > 0:
            trainable = [n for n, p in model.named_parameters() if p.requires_grad]
            if hasattr(model, "disable_adapter") and all("lora_" in n for n in trainable):
                self.reference_mode = "adapters"  # the base under fresh adapters: the start
            else:
                self.reference_mode = "copy"
                self.reference = copy.deepcopy(model).eval()
                for p in self.reference.parameters():
                    p.requires_grad_(False)

    def bind(self, train: Sequence[Any], val: Sequence[Any]) -> None:
        assert self.rewards is not None
        self.train_examples = [RewardExample.of(c) for c in train]
        self.val_examples = [RewardExample.of(c) for c in val]
        self.rewards.check_tasks([e.task for e in self.train_examples + self.val_examples])

    def step_count(self, answer_tokens: Sequence[int]) -> int | None:
        return len(answer_tokens) * self.settings.group_size

    def batch_builder(self, processor: Any) -> GroupPrompts:
        return GroupPrompts(processor)

    def val_batch_builder(self, processor: Any) -> BatchedPrompts:
        return BatchedPrompts(processor)

    # ------------------------------------------------------------------ loss

    @torch.no_grad()
    def _sample(self, model: Any, prompt: Mapping[str, torch.Tensor], seed: int) -> torch.Tensor:
        """``group_size`` answers to one prompt: (G, T) token ids, padded after the end."""
        s, inner = self.settings, _inner(model)
        param = next(inner.parameters())
        group = _cast({k: torch.cat([v] * s.group_size) for k, v in prompt.items()}, param)
        devices = [param.device] if param.device.type == "cuda" else []
        was_training = inner.training
        inner.eval()  # no dropout while sampling
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                out = inner.generate(
                    **group,
                    do_sample=True,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    top_k=s.top_k,
                    max_new_tokens=s.max_new_tokens,
                    eos_token_id=self.eos,
                    pad_token_id=self.pad,
                    suppress_tokens=self.suppress or None,
                )
        finally:
            inner.train(was_training)
        return out[:, group["input_ids"].shape[1] :]

    def _lengths(self, answers: torch.Tensor) -> tuple[list[int], list[bool]]:
        """Tokens of each answer up to and including its end token; whether it ran out."""
        lengths, cut = [], []
        for row in answers.tolist():
            end = next((i for i, t in enumerate(row) if t == self.eos), None)
            lengths.append(len(row) if end is None else end + 1)
            cut.append(end is None)
        return lengths, cut

    def _sequences(
        self,
        prompts: Sequence[Mapping[str, torch.Tensor]],
        answers: Sequence[torch.Tensor],
        lengths: Sequence[Sequence[int]],
        device: torch.device,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt + answer of every sampled answer, right-padded into one batch.

        Returns:
            (model inputs, gather positions (R, T), answer tokens (R, T), mask (R, T)): the
            logits at ``positions[r, t]`` predict ``tokens[r, t]``.
        """
        rows: list[tuple[int, Mapping[str, torch.Tensor], torch.Tensor, int]] = []
        for prompt, ans, lens in zip(prompts, answers, lengths):
            for j, n in enumerate(lens):
                rows.append((int(prompt["input_ids"].shape[1]), prompt, ans[j, :n], n))
        width = max(p + n for p, _, _, n in rows)
        longest = max(n for *_, n in rows)
        r = len(rows)
        ids = torch.full((r, width), self.pad, dtype=torch.long)
        attention = torch.zeros((r, width), dtype=torch.long)
        positions = torch.zeros((r, longest), dtype=torch.long)
        tokens = torch.full((r, longest), self.pad, dtype=torch.long)
        mask = torch.zeros((r, longest), dtype=torch.bool)
        has_prompt_mask = "prompt_mask" in prompts[0]
        prompt_mask = torch.zeros((r, width), dtype=torch.bool)
        cross = []
        for k, (p, prompt, ans, n) in enumerate(rows):
            ids[k, :p] = prompt["input_ids"][0]
            ids[k, p : p + n] = ans.cpu()
            attention[k, : p + n] = 1
            if has_prompt_mask:
                prompt_mask[k, :p] = prompt["prompt_mask"][0].bool()
            positions[k, :n] = torch.arange(p - 1, p - 1 + n)
            tokens[k, :n] = ans.cpu()
            mask[k, :n] = True
            if "cross_attention_mask" in prompt:
                # As Mllama's generate does: answer tokens see the images the last prompt
                # token saw; padding sees none.
                cam = prompt["cross_attention_mask"][0]
                grown = torch.cat([cam, cam[-1:].expand(n, *cam.shape[1:])])
                cross.append(torch.nn.functional.pad(grown, (0, 0, 0, 0, 0, width - p - n)))
        inputs: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": attention}
        if has_prompt_mask:
            inputs["prompt_mask"] = prompt_mask
        if cross:
            inputs["cross_attention_mask"] = torch.stack(cross)
        skip = {"input_ids", "attention_mask", "prompt_mask", "cross_attention_mask"}
        for key in prompts[0]:
            if key in skip:
                continue
            # Image inputs: each prompt's block repeated once per sampled answer, in row order.
            inputs[key] = torch.cat(
                [prompt[key] for prompt, lens in zip(prompts, lengths) for _ in lens]
            )
        return inputs, positions.to(device), tokens.to(device), mask.to(device)

    @staticmethod
    def _token_logps(
        model: Any, inputs: Mapping[str, torch.Tensor], positions: torch.Tensor,
        tokens: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        logits = model(**inputs).logits
        if logits.shape[1] != inputs["input_ids"].shape[1]:
            raise RuntimeError(
                f"grpo: the model gave {logits.shape[1]} logits for {inputs['input_ids'].shape[1]}"
                " tokens; it must not expand image tokens itself"
            )
        picked = logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))
        logps = torch.log_softmax(picked.float(), dim=-1)
        return logps.gather(-1, tokens[..., None]).squeeze(-1)

    @torch.no_grad()
    def _reference_logps(
        self, model: Any, inputs: Mapping[str, torch.Tensor], positions: torch.Tensor,
        tokens: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        inner = _inner(model)
        if self.reference_mode == "adapters":
            was_training = inner.training
            inner.eval()
            try:
                with inner.disable_adapter():
                    return self._token_logps(inner, inputs, positions, tokens)
            finally:
                inner.train(was_training)
        param = next(inner.parameters())
        if next(self.reference.parameters()).device != param.device:
            self.reference.to(param.device)
        return self._token_logps(self.reference, inputs, positions, tokens)

    def loss(self, model: Any, batch: Mapping[str, Any]) -> BatchLoss:
        assert self.rewards is not None
        s = self.settings
        param = next(_inner(model).parameters())
        prompts = batch["examples"]
        indices = batch["index"].tolist()
        seeds = batch["sample_seed"].tolist()
        answers, lengths, cut, texts, examples = [], [], [], [], []
        for prompt, index, seed in zip(prompts, indices, seeds):
            sampled = self._sample(model, prompt, int(seed))
            lens, ran_out = self._lengths(sampled)
            answers.append(sampled)
            lengths.append(lens)
            cut.extend(ran_out)
            texts.extend(
                self.tokenizer.decode(row[:n], skip_special_tokens=True).strip()
                for row, n in zip(sampled.tolist(), lens)
            )
            examples.extend([self.train_examples[index]] * s.group_size)
        scored = self.rewards.score(examples, texts, cut)
        rewards = torch.tensor(scored.total, dtype=torch.float32).view(-1, s.group_size)
        centred = rewards - rewards.mean(dim=1, keepdim=True)
        spread = rewards.std(dim=1, keepdim=True)  # unbiased, as TRL's GRPO
        advantages = centred / (spread + 1e-4) if s.scale_rewards else centred
        inputs, positions, tokens, mask = self._sequences(prompts, answers, lengths, param.device)
        inputs = _cast(inputs, param)
        logps = self._token_logps(model, inputs, positions, tokens)
        adv = advantages.view(-1, 1).to(logps.device)
        per_token = -torch.exp(logps - logps.detach()) * adv
        kl = torch.zeros_like(logps)
        if self.reference_mode is not None:
            ref = self._reference_logps(model, inputs, positions, tokens)
            delta = ref - logps
            kl = torch.exp(delta) - delta - 1
            per_token = per_token + s.kl_coef * kl
        fmask = mask.float()
        tokens_per = fmask.sum(dim=1).clamp(min=1)
        per_answer = (per_token * fmask).sum(dim=1) / tokens_per
        self._note(scored, rewards, spread, kl, fmask, tokens_per)
        return BatchLoss(per_answer.mean(), int(per_answer.shape[0]))

    # ------------------------------------------------------------------ logging

    def _stat_names(self) -> list[str]:
        names = ["reward", "reward_std", "kl", "answer_tokens", "flat_groups"]
        names += [f"reward/{k}" for k in sorted(self.settings.rewards)]
        names += [f"guard/{k}" for k in GUARDS]
        return names

    def _note(self, scored: Any, rewards: torch.Tensor, spread: torch.Tensor, kl: torch.Tensor,
              fmask: torch.Tensor, tokens_per: torch.Tensor) -> None:  # fmt: skip
        n = float(rewards.numel())
        kl_answer = ((kl.detach() * fmask).sum(dim=1) / tokens_per).sum()
        last: dict[str, float] = {
            "reward": float(rewards.sum()),
            "reward#": n,
            "reward_std": float(spread.sum()),
            "reward_std#": float(spread.numel()),
            "kl": float(kl_answer),
            "kl#": n,
            "answer_tokens": float(fmask.sum()),
            "answer_tokens#": n,
            "flat_groups": float((spread == 0).sum()),
            "flat_groups#": float(spread.numel()),
        }
        for name, values in scored.components.items():
            known = [v for v in values if not math.isnan(v)]
            last[f"reward/{name}"], last[f"reward/{name}#"] = float(sum(known)), float(len(known))
        for name, values in scored.guards.items():
            last[f"guard/{name}"], last[f"guard/{name}#"] = float(sum(values)), float(len(values))
        self._last = last

    def account(self, weight: float) -> None:
        """Adds the last micro-batch's statistics (not those of a weight-0 stand-in batch)."""
        if weight > 0:
            for k, v in self._last.items():
                self._sums[k] = self._sums.get(k, 0.0) + v
        self._last = {}

    def log_values(self, accelerator: Any) -> dict[str, float]:
        """Means since the last call over all processes (every process must call it)."""
        names = self._stat_names()
        flat = [self._sums.get(k, 0.0) for k in names] + [
            self._sums.get(f"{k}#", 0.0) for k in names
        ]
        total = accelerator.reduce(torch.tensor(flat, device=accelerator.device), "sum").tolist()
        self._sums = {}
        half = len(names)
        out = {k: (total[i] / total[half + i]) if total[half + i] else math.nan
               for i, k in enumerate(names)}  # fmt: skip
        self._bar = {"reward": out["reward"], "kl": out["kl"]}
        return out

    def bar_values(self) -> dict[str, float]:
        return dict(self._bar)

    # ------------------------------------------------------------------ validation

    @torch.no_grad()
    def validate(
        self, model: Any, batches: Iterable[Mapping[str, Any]], accelerator: Any
    ) -> dict[str, float]:
        """Greedy answers to the held-out prompts: mean total reward (after the guards'
        penalty), each component and each guard."""
        assert self.rewards is not None
        inner = _inner(model)
        param = next(inner.parameters())
        names = ["reward", *(f"reward/{k}" for k in sorted(self.settings.rewards))]
        names += [f"guard/{k}" for k in GUARDS]
        sums = dict.fromkeys(names, 0.0)
        counts = dict.fromkeys(names, 0.0)
        for batch in batches:
            indices = batch["index"].tolist()
            inputs = _cast({k: v for k, v in batch.items() if k != "index"}, param)
            out = inner.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=self.settings.max_new_tokens,
                eos_token_id=self.eos,
                pad_token_id=self.pad,
                suppress_tokens=self.suppress or None,
            )
            new = out[:, inputs["input_ids"].shape[1] :]
            lengths, cut = self._lengths(new)
            texts = [
                self.tokenizer.decode(row[:n], skip_special_tokens=True).strip()
                for row, n in zip(new.tolist(), lengths)
            ]
            scored = self.rewards.score([self.val_examples[i] for i in indices], texts, cut)
            sums["reward"] += sum(scored.total)
            counts["reward"] += len(scored.total)
            for name, values in scored.components.items():
                known = [v for v in values if not math.isnan(v)]
                sums[f"reward/{name}"] += sum(known)
                counts[f"reward/{name}"] += len(known)
            for name in GUARDS:
                sums[f"guard/{name}"] += sum(scored.guards[name])
                counts[f"guard/{name}"] += len(scored.guards[name])
        flat = [sums[k] for k in names] + [counts[k] for k in names]
        total = accelerator.reduce(torch.tensor(flat, device=accelerator.device), "sum").tolist()
        half = len(names)
        return {
            f"val_{k}": (total[i] / total[half + i]) if total[half + i] else math.nan
            for i, k in enumerate(names)
        }
