"""Naturalness and faithfulness of generated responses against the human ones of the same prompts
(DESIGN §9): BNG, HCR, length Wasserstein-1 and KS, a classifier two-sample test, MAUVE on the project's
features (optional extra) and the multi-turn dynamics similarity TDM. Every function takes plain arrays."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import numpy as np
from scipy.stats import ks_2samp, wasserstein_distance

from polyalign.evaluation.diversity import ngrams
from polyalign.evaluation.utility import answer_units
from polyalign.log import native_output_silenced
from polyalign.text import CJK_RE


def wasserstein_1(a: Sequence[float], b: Sequence[float]) -> float:
    return float(wasserstein_distance(a, b))


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """The two-sample KS statistic D. Only D is used, and D does not depend on how the p-value is computed:
    `asymp` skips the exact p-value, which fails (with a warning) on tied lengths, and the errstate silences the
    division by zero of its p-value for tiny samples (m n / (m + n) < 0.5), which D does not use."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(ks_2samp(a, b, method="asymp").statistic)


def column_wasserstein(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Wasserstein-1 distance of every column of A to the same column of B. With as many rows on both sides
    (one response per prompt) it is the mean absolute gap of the sorted columns, vectorised."""
    A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    if len(A) == len(B):
        return np.abs(np.sort(A, axis=0) - np.sort(B, axis=0)).mean(axis=0)
    return np.array([wasserstein_distance(A[:, j], B[:, j]) for j in range(A.shape[1])])


def bng(generated: np.ndarray, human: np.ndarray, scale: np.ndarray | None = None,
        active: np.ndarray | None = None, cap: float = 3.0) -> float:
    """Bucket naturalness gap: mean over the non-constant features of W1(generated_f, human_f) / scale_f, each
    gap capped at `cap` so that one outlier feature cannot dominate. Default scale: the human std; default
    active: the features whose scale is positive. 0 = the generated feature distributions equal the human ones."""
    scale = np.asarray(human, dtype=np.float64).std(axis=0) if scale is None else np.asarray(scale, dtype=np.float64)
    active = scale > 0 if active is None else np.asarray(active, dtype=bool) & (scale > 0)
    if not active.any() or len(generated) == 0:
        return float("nan")
    gaps = column_wasserstein(np.asarray(generated)[:, active], np.asarray(human)[:, active]) / scale[active]
    return float(np.minimum(gaps, cap).mean())


def inside_band(X: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Which values lie inside the support band [low_f, high_f] of their feature (rows x features)."""
    return (X >= low) & (X <= high)


def hcr(inside: np.ndarray, core: np.ndarray) -> dict[str, float]:
    """Human-support coverage rate from `inside_band` flags: the mean per-feature share and the joint share of
    responses inside the band on every `core` feature at once."""
    inside = np.asarray(inside, dtype=bool)
    if len(inside) == 0:
        return {"hcr_mean": float("nan"), "hcr_joint": float("nan")}
    return {"hcr_mean": float(inside.mean()), "hcr_joint": float(inside[:, core].all(axis=1).mean())}


def _lexical_units(text: str) -> list[str]:
    units = answer_units(text)
    return [" ".join(g) for n in (1, 2) for g in ngrams(units, n)]


def c2st_correct(human: Sequence[str], generated: Sequence[str], folds: int = 5, seed: int = 0) -> np.ndarray:
    """Classifier two-sample test, per prompt: the share (0, 0.5 or 1) of the prompt's two held-out predictions
    (its human and its generated response) that a logistic regression telling human from generated got right.
    Their mean is the C2ST accuracy (0.5 = indistinguishable, 1.0 = always told apart); kept per prompt so that
    resampling prompts gives the accuracy an interval without refitting.

    Both sides of a prompt are always in the same fold. The featuriser is hashed unit unigrams and bigrams (words
    for English, characters for Chinese), unlike the critic's character n-gram SVD embedding and bucket
    features, so a method that learnt to please the critic is not judged by the critic's own view. All NaN when
    there are fewer than two pairs."""
    n = len(human)
    if n != len(generated):
        raise ValueError("c2st needs one generated response per human response")
    if n < 2:
        return np.full(n, np.nan)
    # scikit-learn is imported here, not at the top: the SFT and HDPO validation probes import this module and
    # never run a C2ST, and the import costs them about a second per stage
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    vectorizer = HashingVectorizer(analyzer=_lexical_units, n_features=2**18, alternate_sign=False, norm="l2")
    X = vectorizer.transform(list(human) + list(generated))
    y = np.r_[np.zeros(n), np.ones(n)]
    groups = np.r_[np.arange(n), np.arange(n)]
    right = np.zeros(2 * n)
    for train, test in GroupKFold(n_splits=min(folds, n), shuffle=True, random_state=seed).split(X, y, groups):
        model = LogisticRegression(C=1.0, solver="liblinear", max_iter=1000).fit(X[train], y[train])
        right[test] = model.predict(X[test]) == y[test]
    return (right[:n] + right[n:]) / 2


def c2st(human: Sequence[str], generated: Sequence[str], folds: int = 5, seed: int = 0) -> float:
    """C2ST held-out accuracy over all 2n predictions (see `c2st_correct`); NaN with fewer than two pairs."""
    correct = c2st_correct(human, generated, folds, seed)
    return float(correct.mean()) if len(correct) >= 2 else float("nan")


def replacement_share(texts: Sequence[str]) -> float:
    """Share of responses containing U+FFFD, the character a tokenizer decodes broken byte sequences to: text
    that is not text."""
    return float(np.mean(["\ufffd" in t for t in texts])) if len(texts) else float("nan")


# A response is in the prompt's language when its CJK share of letters is at least this for zh, at most this for en
ZH_MIN_CJK_SHARE, EN_MAX_CJK_SHARE = 0.5, 0.1


def cjk_letter_share(text: str) -> float:
    """Share of the letters that are CJK characters; NaN for a text without letters."""
    letters = [c for c in text if c.isalpha()]
    return sum(CJK_RE.match(c) is not None for c in letters) / len(letters) if letters else float("nan")


def wrong_language_share(texts: Sequence[str], languages: Sequence[str]) -> float:
    """Share of responses not in their prompt's language: to a zh prompt, a CJK share of letters below 0.5; to an
    en prompt, above 0.1. A response without letters is not judged wrong; other languages are not judged."""

    def wrong(text: str, language: str) -> bool:
        share = cjk_letter_share(text)  # NaN without letters: neither comparison holds
        return (language == "zh" and share < ZH_MIN_CJK_SHARE) or (language == "en" and share > EN_MAX_CJK_SHARE)

    return float(np.mean([wrong(t, lang) for t, lang in zip(texts, languages)])) if len(texts) else float("nan")


def mauve_available() -> bool:
    return importlib.util.find_spec("mauve") is not None


def mauve_score(human: np.ndarray, generated: np.ndarray, seed: int = 0) -> float:
    """MAUVE (mauve-text, the optional `mauve` extra) on precomputed feature vectors: 1 = same distribution."""
    if len(human) < 2 or len(generated) < 2:
        return float("nan")
    import mauve

    with native_output_silenced():  # faiss's C++ k-means warns about small clusters on every call
        result = mauve.compute_mauve(p_features=np.asarray(human, dtype=np.float32),
                                     q_features=np.asarray(generated, dtype=np.float32), seed=seed, verbose=False)
    return float(result.mauve)


def turn_dynamics(responses: Sequence[str], user_turns: Sequence[str], response_vectors: np.ndarray,
                  turn_vectors: np.ndarray) -> np.ndarray:
    """How each response relates to the user turn it answers (rows x 3): log length ratio, the share of the
    response's units that occur in the user turn (lexical overlap), and the cosine of their latent vectors."""
    out = np.zeros((len(responses), 3))
    for i, (response, turn) in enumerate(zip(responses, user_turns)):
        r_units, t_units = answer_units(response), answer_units(turn)
        t_set = set(t_units)
        out[i, 0] = np.log((1 + len(r_units)) / (1 + len(t_units)))
        out[i, 1] = sum(u in t_set for u in r_units) / len(r_units) if r_units else 0.0
    norms = np.linalg.norm(response_vectors, axis=1) * np.linalg.norm(turn_vectors, axis=1)
    dots = (response_vectors * turn_vectors).sum(axis=1)
    out[:, 2] = np.divide(dots, norms, out=np.zeros(len(dots)), where=norms > 0)
    return out


def tdm(generated: np.ndarray, human: np.ndarray, floor: float = 0.05) -> float:
    """Turn-dynamics match in (0, 1]: mean over the dynamics of exp(-W1(generated_d, human_d) / s_d), with
    s_d = max(human std, floor). 1 = the generated responses couple to the user turn exactly as humans do."""
    generated, human = np.asarray(generated, dtype=np.float64), np.asarray(human, dtype=np.float64)
    if len(generated) == 0 or len(human) == 0:
        return float("nan")
    scale = np.maximum(human.std(axis=0), floor)
    return float(np.exp(-column_wasserstein(generated, human) / scale).mean())
