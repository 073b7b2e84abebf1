"""Per-request generation parameters and the batched logits pipeline that turns logits into tokens.

Randomness comes from each request's own `torch.Generator`, so a seeded request gives the same tokens
whatever else shares its batch.
"""

import math
import secrets
from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    max_new_tokens: int = 100
    do_sample: bool = False  # greedy when False; the server turns TGI's implicit rules into this flag
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None  # CTRL-style, over prompt and generated tokens
    frequency_penalty: float = 0.0  # OpenAI-style, over generated tokens
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    top_n_tokens: int = 0  # alternatives reported per step
    prompt_logprobs: bool = False  # logprobs of the prompt tokens (TGI's decoder_input_details)

    @property
    def penalized(self) -> bool:
        return bool(self.repetition_penalty and self.repetition_penalty != 1.0) or bool(
            self.frequency_penalty or self.presence_penalty)


@dataclass
class SamplerState:
    """What sampling needs to remember about one request between steps."""

    params: SamplingParams
    seed: int | None  # the seed actually used (drawn at random when sampling without one)
    generator: torch.Generator | None
    seen: torch.Tensor | None  # [V] bool: prompt + generated ids, for the repetition penalty
    counts: torch.Tensor | None  # [V] float: how often each id was generated, for OpenAI penalties

    @classmethod
    def create(cls, params: SamplingParams, prompt_ids: list[int], vocab: int, device: torch.device) -> "SamplerState":
        generator, seed = None, None
        if params.do_sample:
            seed = params.seed if params.seed is not None else secrets.randbits(63)
            generator = torch.Generator(device=device)
            generator.manual_seed(seed)
        seen = counts = None
        if params.penalized:
            seen = torch.zeros(vocab, dtype=torch.bool, device=device)
            seen[torch.tensor(prompt_ids, device=device)] = True
            counts = torch.zeros(vocab, dtype=torch.float32, device=device)
        return cls(params=params, seed=seed, generator=generator, seen=seen, counts=counts)

    def record(self, token_id: int) -> None:
        if self.seen is not None and self.counts is not None:
            self.seen[token_id] = True
            self.counts[token_id] += 1


@dataclass
class SampleOutput:
    token_ids: list[int]
    logprobs: list[float]  # of each chosen token under the model's own distribution
    top: list[list[tuple[int, float]]]  # per row, the top_n_tokens alternatives (id, logprob)


def sample(logits: torch.Tensor, states: list[SamplerState]) -> SampleOutput:
    """Choose one token per row of `logits` ([B, V]) according to each row's parameters.

    Reported logprobs are those of the model's raw distribution (before penalties and warping), as vLLM
    and the OpenAI API report them; the choice itself uses the processed distribution.
    """
    logits = logits.float()
    raw_logprobs = torch.log_softmax(logits, dim=-1)
    processed = logits.clone() if any(s.params.penalized for s in states) else logits
    chosen: list[int] = []
    greedy_rows = [i for i, s in enumerate(states) if not s.params.do_sample]
    for i, state in enumerate(states):
        if state.params.penalized:
            processed[i] = apply_penalties(processed[i], state)
    if greedy_rows:  # max().indices: the same first-maximum ids as argmax, measured 1.5x faster on the CPU
        rows = processed if len(greedy_rows) == len(states) else processed[greedy_rows]
        greedy_ids = rows.max(dim=-1).indices.tolist()
    greedy_map = dict(zip(greedy_rows, greedy_ids)) if greedy_rows else {}
    for i, state in enumerate(states):
        if i in greedy_map:
            chosen.append(greedy_map[i])
        else:
            chosen.append(draw(warp(processed[i], state.params), state.generator))
    ids = torch.tensor(chosen, device=logits.device)
    chosen_lp = raw_logprobs.gather(1, ids[:, None])[:, 0].tolist()
    top: list[list[tuple[int, float]]] = [[] for _ in states]
    n_max = max(s.params.top_n_tokens for s in states)
    if n_max:
        values, indices = raw_logprobs.topk(n_max, dim=-1)
        for i, state in enumerate(states):
            n = state.params.top_n_tokens
            top[i] = list(zip(indices[i, :n].tolist(), values[i, :n].tolist()))
    for state, token in zip(states, chosen):
        state.record(token)
    return SampleOutput(token_ids=chosen, logprobs=chosen_lp, top=top)


def apply_penalties(logits: torch.Tensor, state: SamplerState) -> torch.Tensor:
    """Repetition (CTRL: divide positive, multiply negative logits of seen ids), then frequency/presence."""
    p = state.params
    assert state.seen is not None and state.counts is not None
    if p.repetition_penalty and p.repetition_penalty != 1.0:
        penalized = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
        logits = torch.where(state.seen, penalized, logits)
    if p.frequency_penalty or p.presence_penalty:
        logits = logits - p.frequency_penalty * state.counts - p.presence_penalty * (state.counts > 0).float()
    return logits


def warp(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Probabilities after temperature, top-k, top-p, min-p and typical-p (in that order)."""
    logits = logits / p.temperature
    if p.top_k is not None and p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if p.top_p is not None and p.top_p < 1.0:
        probs = _nucleus(probs, p.top_p)
    if p.min_p is not None and p.min_p > 0.0:
        probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
    if p.typical_p is not None:
        probs = _typical(probs, p.typical_p)
    return probs / probs.sum()


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One id with probability proportional to `probs` ([V], not all zero), by inverting the cumulative
    distribution at one uniform number. torch.multinomial took ~1.8 ms for GPT-2's 50257 ids on a CPU, a tenth of
    a decode step per sampled sequence; this takes ~0.1 ms. Sums in float64, so ids keep their mass to ~1e-16."""
    cdf = probs.double().cumsum(0)
    u = torch.rand((), dtype=torch.float64, device=probs.device, generator=generator) * cdf[-1]
    i = int(torch.searchsorted(cdf, u.reshape(1), right=True))
    # The first id whose cumulative mass exceeds u has mass of its own; u can round up to the total only at the
    # very end, where the last id with any mass is the one to take.
    return i if i < probs.numel() else int(probs.nonzero().max())


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest most-likely set whose mass reaches top_p: drop a token if the mass before it already
    does. Sorting all 50257 probabilities took ~5 ms on a CPU; the set usually lies among the few hundred most
    likely, so those are taken first (topk, ~0.3 ms) and everything is sorted only when they fall short."""
    for k in (256, 4096):
        if k < probs.numel():
            values, order = probs.topk(k)
            cumulative = values.cumsum(-1)
            if cumulative[-1] >= top_p:  # every token after the k-th is dropped
                break
    else:
        values, order = probs.sort(descending=True)
        cumulative = values.cumsum(-1)
    keep = cumulative - values < top_p
    keep[0] = True
    return torch.zeros_like(probs).scatter_(0, order[keep], values[keep])


def _typical(probs: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling: keep the tokens whose surprise is closest to the entropy, up to `mass`."""
    logp = torch.log(probs.clamp_min(1e-30))
    entropy = -(probs * logp).nansum()
    distance = (-logp - entropy).abs()
    distance = torch.where(probs > 0, distance, torch.full_like(distance, math.inf))
    order = distance.argsort()
    sorted_probs = probs[order]
    drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= mass
    drop_sorted[0] = False
    return probs.masked_fill(drop_sorted.scatter(0, order, drop_sorted), 0.0)
