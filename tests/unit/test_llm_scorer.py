"""recforge.llm_scorer without a language model: which candidates are asked about, in which order, and how
the option scores become the ``llm_logprob`` feature. The model's own scores are tested with the real
SmolLM2 in test_llm_paths.py; here ``score`` is replaced by a deterministic function of the prompt."""

from __future__ import annotations

import numpy as np

from recforge import rerank
from recforge.llm_scorer import LLMScorer, short_title, user_prompt
from tests.unit.test_rerank_candidates import workspace  # noqa: F401  (the shared fixture)

MODELS = ["pop", "knn"]


class ScriptedScorer(LLMScorer):
    """Option j of a prompt scores -j + 0.01 * len(its title); records the prompts."""

    def score(self, texts, keys=None):
        self.asked = list(texts)
        out = []
        for i, text in enumerate(texts):
            options = [line.split(". ", 1)[1] for line in text.splitlines()[2:-1]]
            out.append([-j + 0.01 * len(title) for j, title in enumerate(options)])
            if keys is not None:
                self.cache[keys[i]] = out[-1]
        return out


def test_short_title_and_prompt():
    # catches the year, the trailing article or the word cap lost (longer prompts, slower scoring)
    assert short_title("Matrix, The (1999)", 6) == "The Matrix"
    assert short_title("One Two Three Four Five Six Seven", 3) == "One Two Three"
    text = user_prompt(["X", "Y"], ["P", "Q", "R"])
    assert text.splitlines()[:5] == ["History: X; Y.", "Options:", "A. P", "B. Q", "C. R"]
    assert text.count("\n") - 2 == 3  # how score() counts the options


def test_feature_asks_top_candidates_in_fusion_order_and_removes_the_position_prior(workspace):  # noqa: F811
    # catches candidates asked in the wrong order (letters not matching rows), rows beyond the top
    # llm_candidates scored, and the position prior not subtracted
    workspace.params.rerank.llm_candidates = 2
    scorer = ScriptedScorer(workspace.params)
    data = rerank.part_data(workspace, "val", MODELS)
    frame = rerank.build_part(workspace, "val", MODELS)
    values = scorer(frame, data)
    assert len(scorer.asked) == frame["user"].nunique()
    titles = dict(zip(range(len(data.items)), data.items["title"].map(lambda t: short_title(t, 6)), strict=True))
    raw, rows = [], []
    for _, group in frame.groupby("user"):
        top = group.sort_values("rrf", ascending=False, kind="stable")
        assert np.isnan(values[frame.index.get_indexer(top.index[2:])]).all()  # only the top 2 are asked
        raw.append([-j + 0.01 * len(titles[int(item)]) for j, item in enumerate(top["item"].iloc[:2])])
        rows.append(top.index[:2])
    raw = np.asarray(raw)
    expected = raw - raw.mean(axis=0)  # each letter's mean over users removed
    for user_rows, want in zip(rows, expected, strict=True):
        np.testing.assert_allclose(values[frame.index.get_indexer(user_rows)], want, atol=1e-9)


def test_scores_are_cached_by_prompt(workspace):  # noqa: F811
    # catches the disk cache not written or not read: a second scorer must not ask the model again
    data = rerank.part_data(workspace, "val", MODELS)
    frame = rerank.build_part(workspace, "val", MODELS)
    first = ScriptedScorer(workspace.params)
    a = first(frame, data)
    assert first.stats["scored"] == first.stats["users"] > 0
    second = ScriptedScorer(workspace.params)
    second.asked = []
    b = second(frame, data)
    assert second.asked == [] and second.stats["cached"] == second.stats["users"]
    np.testing.assert_array_equal(a, b)
