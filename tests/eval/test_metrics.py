"""Metrics, intervals, suites and the cache on tiny hand-checked inputs (no model)."""

from __future__ import annotations

import math

import pytest

from eval.cache import ResultCache
from eval.metrics import UnknownMetricError, get_metric
from eval.metrics.bbh import score_bbh
from eval.metrics.fit import fit_values
from eval.metrics.gsm8k import score_gsm8k
from eval.metrics.memorization import (
    longest_common_run,
    rouge_l,
    score_copy,
    split_response,
    words,
)
from eval.perplexity import bits_per_byte, rolling_windows, weighted_perplexity
from eval.stats import bootstrap, combine_mean, paired_bootstrap
from eval.suite import UnknownSuiteError, list_suites, load_suite
from teacher.core.config import ConfigError
from teacher.core.tasks import Example
from teacher.core.templates import GSM8K_COT_8SHOT, GSM8K_COT_ZEROSHOT


def gsm8k_example(final: str = "1,234") -> Example:
    return Example("gsm8k/test/000000", "gsm8k", "test", "q?", f"Work.\n#### {final}", final)


# ----------------------------------------------------------------------------- gsm8k


@pytest.mark.parametrize(
    ("output", "strict", "flexible"),
    [
        ("so 1000 + 234 = 1234\n#### 1234", 1.0, 1.0),  # "," ignored by the metric
        ("#### 1,234.", 1.0, 1.0),  # "," and the final "." ignored by the metric
        ("#### $1,234", 0.0, 1.0),  # strict's regex takes no "$"; flexible's does
        ("The total is 1234 dollars.", 0.0, 1.0),  # no "####" line: strict fails
        ("#### 1234.00", 0.0, 0.0),  # lm-eval compares strings: 1234.00 != 1234
        ("#### 1234\nor maybe 99", 1.0, 0.0),  # flexible takes the last number
        ("no number at all", 0.0, 0.0),
    ],
)
def test_gsm8k_zeroshot_strict_and_flexible(output, strict, flexible):
    s = score_gsm8k(output, gsm8k_example(), GSM8K_COT_ZEROSHOT)
    assert (s["strict_match"], s["flexible_extract"]) == (strict, flexible)


def test_gsm8k_8shot_uses_gsm8k_cot_strict_filter():
    ex = gsm8k_example("18")
    hit = score_gsm8k("16 - 3 - 4 = 9. 9 * 2 = 18. The answer is 18.\n\n", ex, GSM8K_COT_8SHOT)
    assert hit["answer_strict"] == "18" and hit["strict_match"] == 1.0
    # The zero-shot "####" line is not what gsm8k_cot's strict filter reads.
    miss = score_gsm8k("#### 18", ex, GSM8K_COT_8SHOT)
    assert miss["answer_strict"] == "[invalid]" and miss["strict_match"] == 0.0
    assert miss["flexible_extract"] == 1.0
    neg = score_gsm8k("The answer is -5.", gsm8k_example("-5"), GSM8K_COT_8SHOT)
    assert neg["strict_match"] == 1.0


# ----------------------------------------------------------------------------- bbh


@pytest.mark.parametrize(
    ("output", "target", "hit"),
    [
        ("A is true. So the answer is (B).", "(B)", 1.0),
        ("not ( True ) is False. So the answer is False.", "False", 1.0),
        ("So the answer is false.", "False", 0.0),  # cot_fewshot exact_match is case-sensitive
        ("The answer: (B)", "(B)", 0.0),  # no "the answer is"
        ("so the answer is (C).", "(B)", 0.0),
    ],
)
def test_bbh_get_answer_exact_match(output, target, hit):
    ex = Example("bbh/x/test/000000", "bbh/x", "test", "q", target, target)
    assert score_bbh(output, ex)["exact_match"] == hit


# ----------------------------------------------------------------------------- perplexity


def test_rolling_windows_by_hand():
    # lm-eval, max_length 4: first window from the prefix token, later ones from one
    # token; the short last window keeps the rest of its input as context.
    wins = list(rolling_windows([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], prefix_token=0, max_length=4))
    assert wins == [([0], [1, 2, 3, 4]), ([4], [5, 6, 7, 8]), ([6, 7, 8], [9, 10])]
    assert list(rolling_windows([5, 6], 0, 4)) == [([0], [5, 6])]
    assert list(rolling_windows([], 0, 4)) == []
    predicted = [t for _, p in rolling_windows(list(range(1, 101)), 0, 7) for t in p]
    assert predicted == list(range(1, 101))  # every token scored exactly once


def test_perplexity_of_a_uniform_distribution():
    vocab = 50
    lls = [20 * math.log(1 / vocab), 30 * math.log(1 / vocab)]  # two docs, 20 + 30 tokens
    assert weighted_perplexity(lls, [20, 30]) == pytest.approx(vocab)
    # One bit per byte: ll = -ln 2 per byte.
    assert bits_per_byte([-math.log(2) * 10, -math.log(2) * 6], [10, 6]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        weighted_perplexity([-1.0], [0])


def test_wikitext_measures_aggregate_like_lm_eval():
    items = [{"loglikelihood": -10.0, "words": 4, "bytes": 20},
             {"loglikelihood": -30.0, "words": 6, "bytes": 30}]
    got = {m.name: m.aggregate_fn()(items) for m in get_metric("wikitext")().measures()}
    assert got["wikitext/word_perplexity"] == pytest.approx(math.exp(40 / 10))
    assert got["wikitext/byte_perplexity"] == pytest.approx(math.exp(40 / 50))
    assert got["wikitext/bits_per_byte"] == pytest.approx(40 / 50 / math.log(2))


# ----------------------------------------------------------------------------- memorization


RESPONSE = "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72"


def test_memorization_on_a_planted_copy():
    s = score_copy(RESPONSE, RESPONSE)
    assert s["exact_match"] == 1.0 and s["rouge_l"] == pytest.approx(1.0)
    assert s["rouge_l_above"] == 1.0 and s["lcs_share"] == 1.0
    assert s["lcs_run"] == len(words(RESPONSE))
    # Whitespace differences still count as an exact copy.
    assert score_copy("  " + RESPONSE.replace("\n", " ") + "\n", RESPONSE)["exact_match"] == 1.0


def test_memorization_on_near_and_far_outputs():
    near = RESPONSE.replace("May", "June")  # one word changed
    s = score_copy(near, RESPONSE)
    assert s["exact_match"] == 0.0 and s["rouge_l_above"] == 1.0 and s["rouge_l"] > 0.9
    far = score_copy("I do not know how many clips she sold.", RESPONSE)
    assert far["rouge_l_above"] == 0.0 and far["exact_match"] == 0.0
    assert far["lcs_run"] == 2.0  # "she sold"
    assert score_copy("", RESPONSE)["rouge_l"] == 0.0


def test_longest_common_run_and_rouge_by_hand():
    assert longest_common_run(["a", "b", "c", "d", "e"], ["x", "b", "c", "d", "y"]) == 3
    assert longest_common_run([], ["a"]) == 0
    # LCS "the cat sat" (3) of 3 and 4 tokens: P=1, R=3/4 -> F1 = 6/7.
    assert rouge_l("the cat sat", "The cat sat on") == pytest.approx(6 / 7)


def test_split_response_halves_by_tokens():
    head, tail = split_response([1, 2, 3, 4, 5], lambda ids: ",".join(map(str, ids)))
    assert (head, tail) == ("1,2", "3,4,5")


# ----------------------------------------------------------------------------- intervals


def test_bootstrap_interval_of_a_mean():
    items = [1.0] * 50 + [0.0] * 50
    est = bootstrap(items, lambda xs: sum(xs) / len(xs), resamples=2000, seed=1)
    assert est.value == 0.5 and est.n == 100
    # Normal approximation: 0.5 ± 1.96 * 0.05.
    assert est.low == pytest.approx(0.402, abs=0.03) and est.high == pytest.approx(0.598, abs=0.03)
    again = bootstrap(items, lambda xs: sum(xs) / len(xs), resamples=2000, seed=1)
    assert (again.low, again.high) == (est.low, est.high)  # seeded: reproducible


def test_bootstrap_edge_cases():
    const = bootstrap([3.0] * 10, lambda xs: sum(xs) / len(xs))
    assert (const.low, const.high) == (3.0, 3.0)
    single = bootstrap([1.0], lambda xs: xs[0])
    assert single.low is None and single.high is None
    with pytest.raises(ValueError):
        bootstrap([], lambda xs: 0.0)


def test_paired_bootstrap_difference():
    a = [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    diff = lambda x, y: x - y  # noqa: E731
    same = paired_bootstrap(a, a, diff, mean)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)  # pairing removes noise
    better = paired_bootstrap([1.0] * 6, a, diff, mean)
    assert better.value == pytest.approx(1 / 3) and better.low >= 0.0
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0], diff, mean)
    combined = combine_mean([better, same])
    assert combined.value == pytest.approx(1 / 6)


# ----------------------------------------------------------------------------- registry, suites


def test_unknown_metric_and_suite_errors():
    with pytest.raises(UnknownMetricError, match=r"did you mean 'gsm8k'"):
        get_metric("gsm8kk")
    with pytest.raises(UnknownMetricError, match="unknown metric 'bleu'"):
        load_suite("smoke", ["metrics=[gsm8k, bleu]"])
    with pytest.raises(UnknownSuiteError, match=r"did you mean 'smoke'"):
        load_suite("smok")
    with pytest.raises(ConfigError, match=r"did you mean 'limit'"):
        load_suite("smoke", ["gsm8k.limt=3"])
    with pytest.raises(UnknownMetricError, match="unknown BBH subtask 'navigat'"):
        load_suite("smoke", ["bbh.subtasks=[navigat]"])
    with pytest.raises(ConfigError, match=r"gsm8k\.template"):
        load_suite("smoke", ["gsm8k.template=bbh-cot-3shot"])


def test_shipped_suites_load():
    assert {"smoke", "quick", "standard", "full"} <= set(list_suites())
    for name in list_suites():
        suite = load_suite(name)
        assert suite.name == name and suite.metrics


def test_fit_values_from_loss_history():
    hist = {"train": [{"step": 1, "epoch": 0.5, "loss": 2.0}, {"step": 2, "epoch": 1, "loss": 1.5}],
            "eval": [{"step": 2, "epoch": 1, "loss": 1.75}]}
    assert fit_values(hist) == {"train_loss": 1.5, "val_loss": 1.75, "gap": 0.25}
    assert fit_values({"train": [], "eval": []})["gap"] is None


def test_cache_hits_and_misses(tmp_path):
    cache = ResultCache(tmp_path)
    key = cache.key({"path": "m", "revision": "r"}, "abc", "gsm8k", "subset1")
    assert cache.get(key) is None
    cache.put(key, [{"id": "a", "strict_match": 1.0}])
    assert cache.get(key) == [{"id": "a", "strict_match": 1.0}]
    other = cache.key({"path": "m", "revision": "r"}, "abd", "gsm8k", "subset1")  # other adapter
    assert cache.get(other) is None
    assert (cache.hits, cache.misses) == (1, 2)
    off = ResultCache(tmp_path, enabled=False)
    assert off.get(key) is None
