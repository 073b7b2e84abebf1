"""Each sampling parameter changes the distribution exactly as defined, on hand-made logits."""

import math

import pytest
import torch

from model.sampling import SamplerState, SamplingParams, apply_penalties, draw, sample, warp

LOGITS = torch.log(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]))


def probs(**kw: object) -> list[float]:
    return [round(p, 6) for p in warp(LOGITS.clone(), SamplingParams(do_sample=True, **kw)).tolist()]


def test_plain_sampling_keeps_the_distribution() -> None:
    assert probs() == pytest.approx([0.5, 0.2, 0.15, 0.1, 0.05], abs=1e-6)


def test_temperature_sharpens_and_flattens() -> None:
    cold, hot = probs(temperature=0.5), probs(temperature=2.0)
    assert cold[0] > 0.5 > hot[0]
    expected = torch.softmax(LOGITS / 0.5, -1).tolist()
    assert cold == pytest.approx(expected, abs=1e-6)


def test_top_k_keeps_the_k_most_likely() -> None:
    assert probs(top_k=2) == pytest.approx([0.5 / 0.7, 0.2 / 0.7, 0, 0, 0], abs=1e-6)


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    assert probs(top_p=0.7) == pytest.approx([0.5 / 0.7, 0.2 / 0.7, 0, 0, 0], abs=1e-6)
    assert probs(top_p=0.71) == pytest.approx([0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0], abs=1e-6)
    assert probs(top_p=0.1) == pytest.approx([1, 0, 0, 0, 0], abs=1e-6)


def test_min_p_masks_below_a_fraction_of_the_top() -> None:
    # 0.3 * 0.5 = 0.15: tokens under 0.15 go, 0.15 itself stays
    assert probs(min_p=0.3) == pytest.approx([0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0], abs=1e-6)


def test_typical_p_keeps_tokens_nearest_the_entropy() -> None:
    # entropy 1.333 nats; surprises 0.69, 1.61, 1.90, 2.30, 3.00: the nearest are ids 1 then 2 (mass 0.35 >= 0.3)
    assert probs(typical_p=0.3) == pytest.approx([0, 0.2 / 0.35, 0.15 / 0.35, 0, 0], abs=1e-6)


def state_for(params: SamplingParams, prompt: list[int]) -> SamplerState:
    return SamplerState.create(params, prompt, vocab=5, device=torch.device("cpu"))


def test_repetition_penalty_divides_positive_and_multiplies_negative() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0])
    state = state_for(SamplingParams(repetition_penalty=2.0), prompt=[0, 1])
    assert apply_penalties(logits, state).tolist() == [1.0, -2.0, 0.5, 3.0, -2.0]


def test_frequency_and_presence_penalties_count_generated_tokens() -> None:
    state = state_for(SamplingParams(frequency_penalty=0.5, presence_penalty=1.0), prompt=[4])
    for token in [2, 2, 3]:
        state.record(token)
    out = apply_penalties(torch.zeros(5), state).tolist()
    assert out == [0.0, 0.0, -2.0, -1.5, 0.0]  # the prompt token 4 is not penalized (OpenAI semantics)


def test_greedy_and_logprobs_and_alternatives() -> None:
    logits = torch.stack([LOGITS, LOGITS.flip(0)])
    states = [state_for(SamplingParams(top_n_tokens=3), []), state_for(SamplingParams(), [])]
    out = sample(logits, states)
    assert out.token_ids == [0, 4]
    assert out.logprobs == pytest.approx([math.log(0.5), math.log(0.5)], abs=1e-5)
    assert [t for t, _ in out.top[0]] == [0, 1, 2] and out.top[1] == []


def test_same_seed_same_draws_and_a_random_seed_is_reported() -> None:
    params = SamplingParams(do_sample=True, seed=123)
    draws = [[sample(LOGITS[None], [s]).token_ids[0] for _ in range(30)]
             for s in (state_for(params, []), state_for(params, []))]
    assert draws[0] == draws[1] and len(set(draws[0])) > 1
    unseeded = state_for(SamplingParams(do_sample=True), [])
    assert unseeded.seed is not None and state_for(SamplingParams(), []).seed is None


def test_draws_follow_the_distribution_and_never_pick_a_zero() -> None:
    probs = torch.tensor([0.5, 0.0, 0.2, 0.15, 0.0, 0.1, 0.05, 0.0])
    generator = torch.Generator().manual_seed(7)
    counts = torch.bincount(torch.tensor([draw(probs, generator) for _ in range(20000)]), minlength=8)
    assert counts[probs == 0].sum() == 0
    assert (counts / 20000).tolist() == pytest.approx(probs.tolist(), abs=0.012)  # ~3.5 standard deviations
    assert draw(torch.tensor([0.0, 0.0, 3.0, 0.0]), generator) == 2  # unnormalized, one id with mass


def nucleus_by_full_sort(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The definition, over every id: drop a token if the sorted mass before it reaches top_p."""
    values, order = probs.sort(descending=True)
    drop = (values.cumsum(-1) - values) >= top_p
    drop[0] = False
    return probs.masked_fill(drop.scatter(0, order, drop), 0.0)


# Peaked to flat logits: the kept set found among the top 256 (4.0 and 3.0 at 0.5: 12 and 31 ids), the top 4096
# (4.0 at 0.9 and 0.99, 3.0 at 0.9: 265-2977 ids) and only by sorting every id (3.0 at 0.99, all of 0.5).
@pytest.mark.parametrize("scale", [4.0, 3.0, 0.5])
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
def test_top_p_on_a_full_vocabulary_matches_the_definition(scale: float, top_p: float) -> None:
    logits = torch.randn(50257, generator=torch.Generator().manual_seed(int(scale * 100 + top_p * 10))) * scale
    params = SamplingParams(do_sample=True, top_p=top_p)
    expected = nucleus_by_full_sort(torch.softmax(logits, -1), top_p)
    assert torch.equal(warp(logits, params), expected / expected.sum())
