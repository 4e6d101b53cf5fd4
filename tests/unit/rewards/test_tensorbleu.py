"""TensorBLEU: parity with NLTK's BLEU (seeded random + hand cases), edge cases, bad inputs, GPU = CPU."""

from __future__ import annotations

import doctest
import math
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from nltk.translate.bleu_score import SmoothingFunction
from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu
from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu

from rlplat.rewards import tensorbleu
from rlplat.rewards.tensorbleu import corpus_bleu, sentence_bleu

# NLTK warns on every zero count under method0; the values are what we compare.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:nltk.translate.bleu_score")

NLTK_SMOOTHING = {
    "none": SmoothingFunction().method0,
    "floor": SmoothingFunction().method1,
    "add-k": SmoothingFunction().method2,
    "exp": SmoothingFunction().method3,
}
ATOL = 1e-9  # the contract is 1e-6; observed differences are ~1e-16
MAX_LEN, NUM_SLOTS = 64, 4
DBL_MIN = sys.float_info.min  # NLTK method0's stand-in for a zero precision

Case = tuple[list[int], list[list[int]]]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """The tensors here are small; one thread avoids oversubscription stalls on a busy shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)  # candidate, reference slots ([] = no reference in that slot)


def _random_case(rng: np.random.Generator) -> Case:
    """Small vocabularies so n-grams repeat; short lengths often, so candidates shorter than n occur."""
    vocab = int(rng.choice([2, 3, 5, 10, 50]))

    def length() -> int:
        return int(rng.integers(0, 6)) if rng.random() < 0.35 else int(rng.integers(0, MAX_LEN + 1))

    cand = rng.integers(1, vocab + 1, length()).tolist()
    refs = []
    for _ in range(int(rng.integers(1, NUM_SLOTS + 1))):
        mode = rng.random()
        if mode < 0.4 or not cand:  # unrelated reference
            refs.append(rng.integers(1, vocab + 1, length()).tolist())
        elif mode < 0.7:  # noisy copy of the candidate
            refs.append([int(rng.integers(1, vocab + 1)) if rng.random() < 0.2 else t for t in cand])
        else:  # a slice of the candidate
            lo = int(rng.integers(0, len(cand) + 1))
            refs.append(cand[lo : int(rng.integers(lo, len(cand) + 1))])
    return cand, refs


def _pack(cases: list[Case], pad_id: int = 0, max_len: int = MAX_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """Cases -> candidates [B, max_len], references [B, NUM_SLOTS, max_len], right-padded with pad_id."""
    cand = torch.full((len(cases), max_len), pad_id, dtype=torch.long)
    refs = torch.full((len(cases), NUM_SLOTS, max_len), pad_id, dtype=torch.long)
    for i, (c, rs) in enumerate(cases):
        cand[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        for j, r in enumerate(rs):
            refs[i, j, : len(r)] = torch.tensor(r, dtype=torch.long)
    return cand, refs


def _nltk_refs(refs: list[list[int]]) -> list[list[int]]:
    """Empty slots are "no reference"; a sample with none is NLTK's references=[[]]."""
    return [r for r in refs if r] or [[]]


def _nltk_sentence(cases: list[Case], weights: tuple[float, ...], smoothing: str) -> torch.Tensor:
    fn = NLTK_SMOOTHING[smoothing]
    scores = [float(nltk_sentence_bleu(_nltk_refs(rs), c, weights, fn)) for c, rs in cases]
    return torch.tensor(scores, dtype=torch.float64)


def _nltk_corpus(cases: list[Case], weights: tuple[float, ...], smoothing: str) -> float:
    refs = [_nltk_refs(rs) for _, rs in cases]
    return float(nltk_corpus_bleu(refs, [c for c, _ in cases], weights, NLTK_SMOOTHING[smoothing]))


def _random_weights(rng: np.random.Generator, max_n: int) -> tuple[float, ...]:
    w = rng.random(max_n) * (rng.random(max_n) < 0.8)  # some zero weights
    w[int(rng.integers(max_n))] += 0.1
    return tuple(float(x) for x in w / w.sum())


# ---------------------------------------------------------------- random parity with NLTK


@pytest.mark.parametrize("smoothing", sorted(NLTK_SMOOTHING))
def test_sentence_bleu4_matches_nltk_on_random_cases(smoothing: str) -> None:
    rng = np.random.default_rng(["add-k", "exp", "floor", "none"].index(smoothing))
    cases = [_random_case(rng) for _ in range(1000)]
    got = sentence_bleu(*_pack(cases), pad_id=0, smoothing=smoothing)
    assert got.dtype == torch.float64 and got.shape == (1000,)
    torch.testing.assert_close(got, _nltk_sentence(cases, (0.25,) * 4, smoothing), atol=ATOL, rtol=0)


@pytest.mark.parametrize("smoothing", sorted(NLTK_SMOOTHING))
def test_sentence_bleu_other_orders_and_weights_match_nltk(smoothing: str) -> None:
    rng = np.random.default_rng(10 + ["add-k", "exp", "floor", "none"].index(smoothing))
    for max_n in (1, 2, 3, 4, 5, 6):
        weights = _random_weights(rng, max_n) if max_n % 2 == 0 else (1.0 / max_n,) * max_n
        cases = [_random_case(rng) for _ in range(60)]
        got = sentence_bleu(*_pack(cases), pad_id=0, max_n=max_n, weights=weights, smoothing=smoothing)
        torch.testing.assert_close(got, _nltk_sentence(cases, weights, smoothing), atol=ATOL, rtol=0)


@pytest.mark.parametrize("smoothing", sorted(NLTK_SMOOTHING))
def test_corpus_bleu_matches_nltk_on_random_corpora(smoothing: str) -> None:
    rng = np.random.default_rng(20 + ["add-k", "exp", "floor", "none"].index(smoothing))
    for k in range(150):
        max_n = 4 if k % 3 else int(rng.integers(1, 6))
        weights = (1.0 / max_n,) * max_n if k % 2 else _random_weights(rng, max_n)
        cases = [_random_case(rng) for _ in range(int(rng.integers(1, 25)))]
        got = corpus_bleu(*_pack(cases), pad_id=0, max_n=max_n, weights=weights, smoothing=smoothing)
        assert got.shape == () and got.dtype == torch.float64
        assert abs(got.item() - _nltk_corpus(cases, weights, smoothing)) <= ATOL, (k, cases)


# ---------------------------------------------------------------- hand cases

NLTK_DOC_HYP1 = "It is a guide to action which ensures that the military always obeys the commands of the party"
NLTK_DOC_HYP2 = "It is to insure the troops forever hearing the activity guidebook that party direct"
NLTK_DOC_REFS = [
    "It is a guide to action that ensures that the military will forever heed Party commands",
    "It is the guiding principle which guarantees the military forces always being under the command of the Party",
    "It is the practical guide for the army always to heed the directions of the party",
]


def _ids(sentences: list[str]) -> list[list[int]]:
    """Words -> token ids >= 1 with one shared vocabulary (0 stays the pad)."""
    vocab: dict[str, int] = {}
    return [[vocab.setdefault(w, len(vocab) + 1) for w in s.split()] for s in sentences]


def test_nltk_docstring_examples() -> None:
    h1, h2, *refs = _ids([NLTK_DOC_HYP1, NLTK_DOC_HYP2, *NLTK_DOC_REFS])
    cand, ref_t = _pack([(h1, refs), (h2, refs)])
    none = sentence_bleu(cand, ref_t, pad_id=0)
    assert str(none[0].item()).startswith("0.5045")  # the digits in NLTK's docstring
    assert 0 < none[1].item() < 1e-70  # "0.0": no 3- and 4-gram overlap, method0 keeps DBL_MIN
    assert str(sentence_bleu(cand, ref_t, pad_id=0, smoothing="floor")[1].item()).startswith("0.0370")
    assert str(sentence_bleu(cand[:1], ref_t[:1], pad_id=0, max_n=5).item()).startswith("0.3920")
    for smoothing in NLTK_SMOOTHING:
        cases = [(h1, refs), (h2, refs)]
        got = sentence_bleu(cand, ref_t, pad_id=0, smoothing=smoothing)
        torch.testing.assert_close(got, _nltk_sentence(cases, (0.25,) * 4, smoothing), atol=ATOL, rtol=0)


def test_corpus_nltk_docstring_example() -> None:
    h1, *r1 = _ids([NLTK_DOC_HYP1, *NLTK_DOC_REFS])
    h2, r2 = _ids(["he read the book because he was interested in world history",
                   "he was interested in world history because he read the book"])  # fmt: skip
    h2, r2 = [t + 100 for t in h2], [t + 100 for t in r2]  # separate vocabulary from sentence 1
    cand, refs = _pack([(h1, r1), (h2, [r2])])
    assert str(corpus_bleu(cand, refs, pad_id=0).item()).startswith("0.5920")  # digits in NLTK's docstring
    mean_of_sentences = sentence_bleu(cand, refs, pad_id=0).mean().item()
    assert str(mean_of_sentences).startswith("0.6223")  # corpus BLEU is not the mean of sentence BLEU
    weighted = corpus_bleu(cand, refs, pad_id=0, weights=(0.1, 0.3, 0.5, 0.1))
    assert str(weighted.item()).startswith("0.5818")
    assert weighted.item() == pytest.approx(_nltk_corpus([(h1, r1), (h2, [r2])], (0.1, 0.3, 0.5, 0.1), "none"))


def test_clipping_uses_max_count_over_references() -> None:
    the, cat, is_, on, mat, there, a = range(1, 8)
    cand, refs = _pack([([the] * 7, [[the, cat, is_, on, the, mat], [there, is_, a, cat, on, the, mat]])])
    # "the" appears at most twice in one reference -> 2/7; |c| = 7 = closest reference -> BP = 1
    assert sentence_bleu(cand, refs, pad_id=0, max_n=1).item() == pytest.approx(2 / 7, abs=1e-15)


@pytest.mark.parametrize(
    ("smoothing", "p3", "p4"),
    [("floor", 0.1, 0.1), ("exp", 1 / 2, 1 / 4), ("add-k", 1 / 2, 1 / 2), ("none", DBL_MIN, DBL_MIN)],
)
def test_candidate_shorter_than_n(smoothing: str, p3: float, p4: float) -> None:
    cand, refs = _pack([([1, 2], [[1, 2, 3]])])  # p1 = p2 = 1; no 3-/4-grams: numerator 0, denominator max(1, 0)
    expected = math.exp(1 - 3 / 2) * math.exp(0.25 * (math.log(p3) + math.log(p4)))
    got = sentence_bleu(cand, refs, pad_id=0, smoothing=smoothing).item()
    assert got == pytest.approx(expected, rel=1e-12, abs=0)
    assert got == pytest.approx(nltk_sentence_bleu([[1, 2, 3]], [1, 2], smoothing_function=NLTK_SMOOTHING[smoothing]))


@pytest.mark.parametrize("smoothing", sorted(NLTK_SMOOTHING))
def test_empty_candidate_and_zero_unigram_matches_score_zero(smoothing: str) -> None:
    cases: list[Case] = [([], [[1, 2, 3]]), ([4, 5, 6, 7], [[1, 2, 3]]), ([], [[]])]
    assert sentence_bleu(*_pack(cases), pad_id=0, smoothing=smoothing).tolist() == [0.0, 0.0, 0.0]
    assert corpus_bleu(*_pack(cases), pad_id=0, smoothing=smoothing).item() == 0.0
    # An empty candidate still adds a denominator of 1 per order and its closest reference length to the corpus.
    mixed: list[Case] = [([1, 2, 3, 4, 5], [[1, 2, 3, 4, 5, 6]]), ([], [[7, 8], [7, 8, 9]])]
    got = corpus_bleu(*_pack(mixed), pad_id=0, smoothing=smoothing).item()
    assert got == pytest.approx(_nltk_corpus(mixed, (0.25,) * 4, smoothing), abs=ATOL)


@pytest.mark.parametrize("slots", [[14, 10], [10, 14]])
def test_closest_reference_length_tie_picks_the_shorter(slots: list[int]) -> None:
    cand = list(range(1, 13))  # |c| = 12, references of 10 and 14 tokens are equally close
    cases = [(cand, [list(range(1, n + 1)) for n in slots])]
    # every n-gram matches; r = 10 < 12 -> BP = 1 (picking 14 would give exp(1 - 14/12) = 0.846)
    assert sentence_bleu(*_pack(cases), pad_id=0).item() == 1.0
    assert corpus_bleu(*_pack(cases * 3), pad_id=0).item() == 1.0
    short = [(list(range(1, 10)), [list(range(1, n + 1)) for n in slots])]  # |c| = 9: closest is 10 -> BP < 1
    assert sentence_bleu(*_pack(short), pad_id=0).item() == pytest.approx(math.exp(1 - 10 / 9), rel=1e-12)


def test_none_smoothing_keeps_nltk_tiny_value_and_zero_weight_orders() -> None:
    cases: list[Case] = [([1, 2, 3, 4, 5], [[1, 2, 3, 9, 5]])]  # 4/5, 2/4, 1/3 and 0/2 matches for orders 1..4
    got = sentence_bleu(*_pack(cases), pad_id=0).item()
    assert 0 < got < 1e-70 and got == pytest.approx(_nltk_sentence(cases, (0.25,) * 4, "none").item(), rel=1e-9)
    # an order with weight 0 cannot zero the score
    w = (0.5, 0.5, 0.0, 0.0)
    expected = math.sqrt(4 / 5 * 2 / 4)
    assert sentence_bleu(*_pack(cases), pad_id=0, weights=w).item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(_nltk_sentence(cases, w, "none").item(), rel=1e-12)


def test_add_k_leaves_unigram_unsmoothed() -> None:
    cases: list[Case] = [([1, 2, 3, 4], [[1, 2, 3, 5]])]
    expected = (3 / 4 * (2 + 1) / (3 + 1) * (1 + 1) / (2 + 1) * (0 + 1) / (1 + 1)) ** 0.25
    assert sentence_bleu(*_pack(cases), pad_id=0, smoothing="add-k").item() == pytest.approx(expected, rel=1e-12)


def test_exp_counts_zero_orders_across_all_orders() -> None:
    cases: list[Case] = [([1, 2, 3, 4, 5], [[1, 2, 9, 4, 5]])]  # p1 = 4/5, p2 = 2/4, no 3- or 4-gram matches
    expected = (4 / 5 * 2 / 4 * 1 / (2 * 3) * 1 / (4 * 2)) ** 0.25
    assert sentence_bleu(*_pack(cases), pad_id=0, smoothing="exp").item() == pytest.approx(expected, rel=1e-12)
    # a zero-weight order with zero matches still uses up k = 1: the 4-gram gets 1 / (2^2 * 2)
    w = (0.25, 0.25, 0.0, 0.5)
    expected_w = math.exp(0.25 * math.log(4 / 5) + 0.25 * math.log(2 / 4) + 0.5 * math.log(1 / (4 * 2)))
    got = sentence_bleu(*_pack(cases), pad_id=0, weights=w, smoothing="exp").item()
    assert got == pytest.approx(expected_w, rel=1e-12)
    assert got == pytest.approx(_nltk_sentence(cases, w, "exp").item(), rel=1e-12)


def test_all_pad_reference_slots_mean_no_reference() -> None:
    cases: list[Case] = [
        ([1, 2, 3, 4], [[1, 2, 3, 4, 5, 6], [], [2, 3, 4]]),  # a hole between two references
        ([1, 2, 3, 4], [[], [], [], []]),  # no reference at all -> like NLTK with [[]]: 0, adds r = 0
        ([1, 2, 3, 4], [[], [], [], [1, 2, 3, 4]]),
    ]
    cand, refs = _pack(cases)
    got = sentence_bleu(cand, refs, pad_id=0, smoothing="floor")
    torch.testing.assert_close(got, _nltk_sentence(cases, (0.25,) * 4, "floor"), atol=ATOL, rtol=0)
    assert got[1].item() == 0.0 and got[2].item() == 1.0
    expected = _nltk_corpus(cases, (0.25,) * 4, "floor")
    assert corpus_bleu(cand, refs, pad_id=0, smoothing="floor").item() == pytest.approx(expected, abs=ATOL)
    # samples with different numbers of slots in use give the same scores as one at a time
    one_by_one = torch.cat([sentence_bleu(cand[i : i + 1], refs[i : i + 1], pad_id=0) for i in range(3)])
    torch.testing.assert_close(sentence_bleu(cand, refs, pad_id=0), one_by_one, atol=0, rtol=0)


def test_tokens_after_the_first_pad_are_ignored() -> None:
    cand = torch.tensor([[1, 2, 3, 0, 0], [1, 2, 3, 0, 7]])
    refs = torch.tensor([[[1, 2, 3, 4, 0]], [[1, 2, 3, 4, 0]]])
    got = sentence_bleu(cand, refs, pad_id=0, smoothing="floor")
    assert got[0].item() == got[1].item() == pytest.approx(nltk_sentence_bleu(
        [[1, 2, 3, 4]], [1, 2, 3], smoothing_function=NLTK_SMOOTHING["floor"]), abs=ATOL)  # fmt: skip


def test_any_int64_token_values_and_pad_id() -> None:
    rng = np.random.default_rng(7)
    cases = [_random_case(rng) for _ in range(200)]
    cand, refs = _pack(cases)
    # remap ids 0..50 -> distinct arbitrary int64 values, with -1 as the pad; the scores must not change
    table = [-1, -(2**62), 2**62, 5, 2**40, -7, 0, 31999, 123456789, 2**31, -(2**31), 2**63 - 1, -(2**63)]
    table = torch.tensor(table + [1000 + 3 * i for i in range(51 - len(table))])
    assert table.unique().numel() == 51
    remapped_c, remapped_r = table[cand], table[refs]
    for smoothing in NLTK_SMOOTHING:
        a = sentence_bleu(cand, refs, pad_id=0, smoothing=smoothing)
        b = sentence_bleu(remapped_c, remapped_r, pad_id=-1, smoothing=smoothing)
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_integer_dtypes_and_degenerate_shapes() -> None:
    rng = np.random.default_rng(8)
    cases = [_random_case(rng) for _ in range(50)]
    cand, refs = _pack(cases)
    expected = sentence_bleu(cand, refs, pad_id=0)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        torch.testing.assert_close(sentence_bleu(cand.to(dtype), refs.to(dtype), pad_id=0), expected, atol=0, rtol=0)
    assert sentence_bleu(cand, refs[:, :0], pad_id=0).tolist() == [0.0] * 50  # no reference slots
    assert sentence_bleu(cand[:, :0], refs, pad_id=0).tolist() == [0.0] * 50  # Lc = 0: all candidates empty
    assert sentence_bleu(cand, refs[:, :, :0], pad_id=0).tolist() == [0.0] * 50  # Lr = 0
    empty = sentence_bleu(cand[:0], refs[:0], pad_id=0)
    assert empty.shape == (0,) and empty.dtype == torch.float64
    assert corpus_bleu(cand[:0], refs[:0], pad_id=0).item() == 0.0  # NLTK: corpus_bleu([], []) == 0


BAD_INPUTS = {
    "float candidates": lambda c, r: sentence_bleu(c.float(), r, pad_id=0),
    "bool references": lambda c, r: sentence_bleu(c, r.bool(), pad_id=0),
    "list candidates": lambda c, r: sentence_bleu(c.tolist(), r, pad_id=0),
    "1-D candidates": lambda c, r: sentence_bleu(c[0], r, pad_id=0),
    "2-D references": lambda c, r: sentence_bleu(c, r[:, 0], pad_id=0),
    "4-D references": lambda c, r: corpus_bleu(c, r[:, :, None], pad_id=0),
    "batch mismatch": lambda c, r: corpus_bleu(c[:3], r, pad_id=0),
    "device mismatch": lambda c, r: sentence_bleu(c.to("meta"), r, pad_id=0),
    "unknown smoothing": lambda c, r: sentence_bleu(c, r, pad_id=0, smoothing="method7"),
    "float pad_id": lambda c, r: sentence_bleu(c, r, pad_id=0.0),  # type: ignore[arg-type]
    "pad_id None": lambda c, r: sentence_bleu(c, r, pad_id=None),  # type: ignore[arg-type]
    "max_n 0": lambda c, r: sentence_bleu(c, r, pad_id=0, max_n=0),
    "max_n float": lambda c, r: sentence_bleu(c, r, pad_id=0, max_n=4.0),  # type: ignore[arg-type]
    "weights length": lambda c, r: sentence_bleu(c, r, pad_id=0, weights=(0.5, 0.5)),
    "weights sum": lambda c, r: corpus_bleu(c, r, pad_id=0, weights=(0.5, 0.5, 0.5, 0.5)),
    "weights negative": lambda c, r: sentence_bleu(c, r, pad_id=0, weights=(1.5, -0.5, 0.0, 0.0)),
    "weights nan": lambda c, r: sentence_bleu(c, r, pad_id=0, weights=(float("nan"), 0.5, 0.25, 0.25)),
    "weights strings": lambda c, r: sentence_bleu(c, r, pad_id=0, weights="abcd"),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_inputs_raise_value_error(name: str) -> None:
    cand, refs = _pack([([1, 2, 3], [[1, 2, 3]])] * 4)
    with pytest.raises(ValueError):
        BAD_INPUTS[name](cand, refs)


def test_docstring_examples() -> None:
    assert doctest.testmod(tensorbleu, raise_on_error=False).failed == 0


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_without_host_syncs() -> None:
    rng = np.random.default_rng(9)
    cases = [_random_case(rng) for _ in range(500)]
    cand, refs = _pack(cases)
    for smoothing in NLTK_SMOOTHING:
        expected_s = sentence_bleu(cand, refs, pad_id=0, smoothing=smoothing)
        expected_c = corpus_bleu(cand, refs, pad_id=0, smoothing=smoothing)
        cand_d, refs_d = cand.cuda(), refs.cuda()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any device->host sync inside raises
        try:
            got_s = sentence_bleu(cand_d, refs_d, pad_id=0, smoothing=smoothing)
            got_c = corpus_bleu(cand_d, refs_d, pad_id=0, smoothing=smoothing)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert got_s.device.type == "cuda"
        torch.testing.assert_close(got_s.cpu(), expected_s, atol=1e-12, rtol=0)
        torch.testing.assert_close(got_c.cpu(), expected_c, atol=1e-12, rtol=0)
