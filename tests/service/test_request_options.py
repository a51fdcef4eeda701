"""Every request option of every endpoint, over HTTP, against a recomputation made here from the package's files.

The server is the shared one of tests/service/conftest.py (``server``: popularity and content over tfidf, a
feedback store, one worker, started once per session). Each test changes one option of one endpoint and checks
that the answer changes the way it must AND equals what this module computes itself, with numpy, from the
packaged model files (``models/<name>/*.npz``, ``history.npz``, ``items.parquet``, ``users.parquet``,
``embeddings/tfidf.npy``), never through recforge.engine: a served option that is ignored, inverted, applied to
the wrong user or item, or applied after the list was cut to ``k`` fails here.

Options per endpoint (service/service.py): /recommend ``user_id``, ``k``, ``exclude_seen``, ``explain`` (and the
/feedback exclusions it reads); /recommend/history ``item_ids`` (in order), ``k``; /recommend/text ``text``, ``k``;
/similar-items ``item_id``, ``k``; /explain ``user_id``, ``item_id``. There are no other request options (no
filters): the request models are the endpoints' signatures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

USERS = 6  # known users checked per test, spread over the user index


class Reference:
    """The served package's files read with numpy: scores, histories and top-k computed independently."""

    def __init__(self, directory: Path, meta: dict) -> None:
        self.directory = directory
        self.meta = meta
        items = pd.read_parquet(directory / "items.parquet")
        self.item_ids = [v.item() if hasattr(v, "item") else v for v in items["item_id"].to_numpy()]
        self.titles = [str(t) for t in items["title"]]
        self.index = {item: n for n, item in enumerate(self.item_ids)}
        users = pd.read_parquet(directory / "users.parquet")["user_id"].to_numpy()
        self.user_ids = [v.item() if hasattr(v, "item") else v for v in users]
        with np.load(directory / "history.npz") as history:
            self.indptr, self.history_items = history["indptr"], history["items"]
        with np.load(directory / "models" / "content" / "content.npz") as content:
            self.item_vectors = content["item_vectors"]
            self.user_vectors = content["user_vectors"]
            self.content_popularity = content["popularity"]
        config = json.loads((directory / "models" / "content" / "config.json").read_text())
        self.content_config, self.settings = config["config"], config["settings"]
        with np.load(directory / "models" / "popularity" / "popularity.npz") as popularity:
            self.item_scores = popularity["item_scores"]
        self.evidence_vectors = np.load(directory / "embeddings" / "tfidf.npy")

    def user(self, user_id) -> int:
        return self.user_ids.index(user_id)

    def history(self, user: int) -> np.ndarray:
        """Dense user ``user``'s train+val items in time order (what the package trained its `full` models on)."""
        return self.history_items[self.indptr[user] : self.indptr[user + 1]].astype(np.int64)

    def _content(self, vector: np.ndarray) -> np.ndarray:
        scores = (np.atleast_2d(vector) @ self.item_vectors.T)[0].astype(np.float64)
        weight = self.content_config["popularity_weight"]
        return scores + weight * self.content_popularity.astype(np.float64) if weight else scores

    def scores(self, model: str, user: int) -> np.ndarray:
        """Model ``model``'s score of every item for dense ``user``."""
        if model == "content":
            return self._content(self.user_vectors[user])
        assert model == "popularity", model
        return self.item_scores.astype(np.float64)

    def session_scores(self, model: str, items: list[int]) -> np.ndarray:
        """The fold-in of an anonymous session (oldest first): content's recency-weighted mean profile
        (``half_life_events``; no timestamps or ratings in a request), popularity's counts."""
        if model == "popularity":
            return self.item_scores.astype(np.float64)
        assert model == "content", model
        n = len(items)
        weights = np.ones(n)
        if self.settings["half_life_events"]:
            weights *= 0.5 ** ((n - 1 - np.arange(n)) / self.settings["half_life_events"])
        profile = weights @ self.item_vectors[items].astype(np.float64) / weights.sum()
        norm = np.linalg.norm(profile)
        return self._content((profile / norm if norm > 0 else profile).astype(np.float32))

    @staticmethod
    def top(scores: np.ndarray, k: int, exclude=()) -> list[tuple[int, float]]:
        """Best ``k`` items by score, ties to the lower index, ``exclude`` left out: a plain sort of every item."""
        excluded = {int(i) for i in exclude}
        order = np.lexsort((np.arange(len(scores)), -scores))
        return [(int(i), float(scores[i])) for i in order if int(i) not in excluded][:k]

    def evidence_history(self, user: int, item: int, k: int = 3) -> list:
        """The ``k`` history items closest to ``item`` (cosine over the tfidf embeddings, the item itself and
        repeats left out, ties to the lower index): the items an explanation must be grounded in."""
        sequence = np.unique(self.history(user))
        sequence = sequence[sequence != item]
        similarity = self.evidence_vectors[sequence] @ self.evidence_vectors[item]
        order = np.lexsort((sequence, -similarity))[:k]
        return [self.item_ids[sequence[o]] for o in order]


@pytest.fixture(scope="module")
def ref(server) -> Reference:
    name, version = server["packaged"]["model_tag"].split(":")
    directory = server["root"] / "bentoml" / "models" / name / version
    assert (directory / "manifest.json").exists(), directory
    meta = server["client"].get("/metadata").json()
    assert meta["model_tag"] == server["packaged"]["model_tag"]
    return Reference(directory, meta)


def ask(server, path: str, body: dict) -> dict:
    answer = server["client"].post(path, json=body)
    assert answer.status_code == 200, (path, body, answer.text)
    return answer.json()


def assert_is(served: dict, ref: Reference, expected: list[tuple[int, float]]) -> None:
    """The served items are exactly ``expected`` (dense items with scores), in order, with their titles."""
    assert [item["item_id"] for item in served["items"]] == [ref.item_ids[i] for i, _ in expected]
    assert [item["title"] for item in served["items"]] == [ref.titles[i] for i, _ in expected]
    np.testing.assert_allclose(
        [item["score"] for item in served["items"]], [s for _, s in expected], rtol=1e-5, atol=1e-6
    )


def some_users(ref: Reference) -> list:
    spread = np.linspace(0, len(ref.user_ids) - 3, USERS).astype(int)  # the last two: feedback_user's
    return [ref.user_ids[u] for u in spread]


def feedback_user(ref: Reference):
    """The user whose list the feedback test changes: one of the last two, not /metadata's example user (which
    test_service.py asks the same shared server about)."""
    return next(u for u in ref.user_ids[::-1] if u != ref.meta["example_user_id"])


# ---- /recommend ------------------------------------------------------------------------------------------------


def test_recommend_k_gives_the_models_top_k_and_a_smaller_k_its_prefix(server, ref):
    """Catches k ignored (a fixed list length), a list cut before the history is removed (shorter than k), a
    top-k that is not the model's best k (a partial sort without the tie-break, scores of another user) and
    k=3 not being the first 3 of k=10."""
    model = ref.meta["model"]
    for user_id in some_users(ref):
        user = ref.user(user_id)
        lists = {k: ask(server, "/recommend", {"user_id": user_id, "k": k}) for k in (3, 10, 40)}
        for k, served in lists.items():
            assert served["model"] == model and served["fallback"] is None and served["user_id"] == user_id
            # every eligible item up to k: some users have seen more than half of the 80 items
            assert len(served["items"]) == min(k, len(ref.item_ids) - len(set(ref.history(user).tolist())))
            assert_is(served, ref, ref.top(ref.scores(model, user), k, exclude=ref.history(user)))
        assert lists[3]["items"] == lists[10]["items"][:3] and lists[10]["items"] == lists[40]["items"][:10]


def test_exclude_seen_removes_exactly_the_users_history(server, ref):
    """Catches exclude_seen ignored in either direction, the exclusion of another user's history or of the train
    part only (the served `full` models saw train+val), and exclude_seen=false still masking history items."""
    model, changed = ref.meta["model"], 0
    for user_id in some_users(ref):
        user = ref.user(user_id)
        history = set(ref.history(user).tolist())
        scores = ref.scores(model, user)
        on = ask(server, "/recommend", {"user_id": user_id, "k": 10, "exclude_seen": True})
        off = ask(server, "/recommend", {"user_id": user_id, "k": 10, "exclude_seen": False})
        assert on == ask(server, "/recommend", {"user_id": user_id, "k": 10})  # true is the default
        assert_is(on, ref, ref.top(scores, 10, exclude=history))
        assert_is(off, ref, ref.top(scores, 10))
        assert not {ref.index[i["item_id"]] for i in on["items"]} & history
        changed += on["items"] != off["items"]
        if on["items"] != off["items"]:
            assert {ref.index[i["item_id"]] for i in off["items"]} & history  # what changed is history
    assert changed >= USERS // 2  # the option matters for these users (their history is among the model's best)


def test_explain_adds_an_explanation_naming_each_item_and_changes_nothing_else(server, ref):
    """Catches explain=true ignored or explain=false explaining anyway, an explanation of another item (an index
    shifted by one) or another user, explaining that reorders or rescores the list, and /recommend's explanation
    disagreeing with /explain's for the same (user, item)."""
    for user_id in some_users(ref)[:3]:
        user = ref.user(user_id)
        plain = ask(server, "/recommend", {"user_id": user_id, "k": 5, "explain": False})
        explained = ask(server, "/recommend", {"user_id": user_id, "k": 5, "explain": True})
        assert all(item["explanation"] is None for item in plain["items"])
        strip = lambda answer: [{**item, "explanation": None} for item in answer["items"]]  # noqa: E731
        assert strip(explained) == strip(plain) and explained["unexplained"] == 0
        for item in explained["items"]:
            dense = ref.index[item["item_id"]]
            text = item["explanation"]
            assert f'"{ref.titles[dense]}"' in text, text
            closest = ref.evidence_history(user, dense)
            assert all(f'"{ref.titles[ref.index[h]]}"' in text for h in closest), (text, closest)
            alone = ask(server, "/explain", {"user_id": user_id, "item_id": item["item_id"]})
            assert alone["explanation"] == text


def test_explain_endpoint_follows_its_user_and_item(server, ref):
    """Catches /explain ignoring item_id or user_id (the same answer for another pair), evidence read from another
    user's history, and evidence that is not the history items closest to the item."""
    users = some_users(ref)[:2]
    items = [ref.item_ids[0], ref.item_ids[len(ref.item_ids) // 2]]
    answers = {}
    for user_id in users:
        for item_id in items:
            answer = ask(server, "/explain", {"user_id": user_id, "item_id": item_id})
            dense = ref.index[item_id]
            assert answer["user_id"] == user_id and answer["item_id"] == item_id
            assert answer["title"] == ref.titles[dense] and f'"{ref.titles[dense]}"' in answer["explanation"]
            evidence = answer["evidence"]
            assert [h["item_id"] for h in evidence["history"]] == ref.evidence_history(ref.user(user_id), dense)
            assert evidence["history_length"] == len(ref.history(ref.user(user_id)))
            answers[user_id, item_id] = answer
    assert len({json.dumps(a, sort_keys=True) for a in answers.values()}) == 4  # every pair is its own answer


def test_feedback_removes_bought_and_disliked_items_from_the_next_list(server, ref):
    """Catches /feedback not reaching /recommend, views excluded too, the list left shorter than k after the
    exclusion (cut to k first), the exclusion applied to exclude_seen=false, and another user's list changed."""
    assert ref.meta["feedback"] is not None, "the shared server has a feedback store (feedback.enabled)"
    model = ref.meta["model"]
    user_id, other_id = feedback_user(ref), ref.user_ids[0]
    user, other = ref.user(user_id), ref.user(other_id)
    history = ref.history(user)
    before = ask(server, "/recommend", {"user_id": user_id, "k": 10})
    other_before = ask(server, "/recommend", {"user_id": other_id, "k": 10})
    top = [item["item_id"] for item in before["items"]]
    events = [
        {"user_id": user_id, "item_id": top[0], "event": "purchase"},
        {"user_id": user_id, "item_id": top[1], "event": "dislike"},
        {"user_id": user_id, "item_id": top[2], "event": "view"},
    ]
    assert ask(server, "/feedback", {"events": events})["stored"] == 3
    time.sleep(ref.meta["feedback"]["staleness_s"])
    after = ask(server, "/recommend", {"user_id": user_id, "k": 10})
    gone = [ref.index[top[0]], ref.index[top[1]]]
    assert after["items"] != before["items"] and top[2] in [i["item_id"] for i in after["items"]]
    assert_is(after, ref, ref.top(ref.scores(model, user), 10, exclude=[*history, *gone]))
    off = ask(server, "/recommend", {"user_id": user_id, "k": 10, "exclude_seen": False})
    assert_is(off, ref, ref.top(ref.scores(model, user), 10))
    assert ask(server, "/recommend", {"user_id": other_id, "k": 10}) == other_before
    assert_is(other_before, ref, ref.top(ref.scores(model, other), 10, exclude=ref.history(other)))


# ---- /recommend/history ----------------------------------------------------------------------------------------


def test_history_session_order_k_and_unknown_ids(server, ref):
    """Catches the session read newest-first (recency weights on the wrong end), k ignored or k=3 not the
    prefix of k=10, the session's own items recommended back, unknown ids mapped onto a real item, and a
    session folded in by another model than /metadata's history_path."""
    model = ref.meta["history_path"]
    user = ref.user(some_users(ref)[1])
    session = [int(i) for i in ref.history(user)[-6:]]
    ids = [ref.item_ids[i] for i in session]
    lists = {k: ask(server, "/recommend/history", {"item_ids": ids, "k": k}) for k in (3, 10)}
    for k, served in lists.items():
        assert served["model"] == model and served["fallback"] is None and len(served["items"]) == k
        assert_is(served, ref, ref.top(ref.session_scores(model, session), k, exclude=session))
    assert lists[3]["items"] == lists[10]["items"][:3]
    reversed_ = ask(server, "/recommend/history", {"item_ids": ids[::-1], "k": 10})
    assert_is(reversed_, ref, ref.top(ref.session_scores(model, session[::-1]), 10, exclude=session))
    if model == "content":  # the order of a session matters to a recency-weighted profile
        assert [i["score"] for i in reversed_["items"]] != [i["score"] for i in lists[10]["items"]]
    shorter = ask(server, "/recommend/history", {"item_ids": ids[:2], "k": 10})
    assert_is(shorter, ref, ref.top(ref.session_scores(model, session[:2]), 10, exclude=session[:2]))
    assert shorter["items"] != lists[10]["items"]
    unknown = ask(server, "/recommend/history", {"item_ids": [*ids, "no-such-item"], "k": 10})
    assert unknown["items"] == lists[10]["items"] and unknown["unknown_item_ids"] == ["no-such-item"]


# ---- /recommend/text -------------------------------------------------------------------------------------------


def test_text_and_k_of_recommend_text(server, ref):
    """Catches the text ignored or a previous request's answer reused for another text, k ignored or k=3 not the
    prefix of k=10, and scores that are not cosine(text embedding, item embedding) of the packaged encoder."""
    from recforge import registry

    assert ref.meta["text_path"] == "content"
    encoder = registry.encoders.get(ref.content_config["encoder"]).load(
        ref.directory / "models" / "content" / "encoder"
    )
    texts = [ref.titles[0] + " " + ref.titles[1], ref.titles[-1]]
    answers = []
    for text in texts:
        vector = np.asarray(encoder.encode([text]), dtype=np.float32)[0]
        lists = {k: ask(server, "/recommend/text", {"text": text, "k": k}) for k in (3, 10)}
        for k, served in lists.items():
            assert served["model"] == "content" and len(served["items"]) == k
            assert_is(served, ref, ref.top(ref._content(vector), k))
        assert lists[3]["items"] == lists[10]["items"][:3]
        answers.append(lists[10]["items"])
    assert answers[0] != answers[1]


# ---- /similar-items --------------------------------------------------------------------------------------------


def test_item_and_k_of_similar_items(server, ref):
    """Catches the item itself listed as its own neighbour, item_id ignored or looked up off by one, k ignored or
    k=3 not the prefix of k=10, and neighbours that are not the closest item embeddings."""
    model = ref.meta["similar_items_path"]
    assert model == "content"
    answers = []
    for dense in (0, len(ref.item_ids) // 2, len(ref.item_ids) - 1):
        item_id = ref.item_ids[dense]
        scores = (ref.item_vectors @ ref.item_vectors[dense]).astype(np.float64)
        lists = {k: ask(server, "/similar-items", {"item_id": item_id, "k": k}) for k in (3, 10)}
        for k, served in lists.items():
            assert served["model"] == model and len(served["items"]) == k
            assert item_id not in [i["item_id"] for i in served["items"]]
            assert_is(served, ref, ref.top(scores, k, exclude=[dense]))
        assert lists[3]["items"] == lists[10]["items"][:3]
        answers.append(lists[10]["items"])
    assert answers[0] != answers[1] != answers[2]


# ---- the re-ranker's precomputed path (the shared `rerank_server` of conftest.py) ------------------------------


def offline_list(rerank_server, user_id) -> pd.DataFrame:
    """The rerank stage's offline test list of ``user_id`` (the workspace's lists), best first."""
    offline = rerank_server["offline"]
    return offline[offline["user_id"] == user_id].sort_values("rank")


def rerank_users(rerank_server) -> list:
    users = rerank_server["offline"]["user_id"].drop_duplicates().to_list()
    return [users[n] for n in np.linspace(0, len(users) - 2, USERS).astype(int)]  # the last: the feedback test's


def test_rerank_k_reads_the_stored_lists_and_k_above_their_length_goes_online(rerank_server):
    """Catches the precomputed lookup ignoring k (always the stored length), a k above the stored length
    answered from the stored list (cut at 20) instead of the online second stage, the online re-ranker disagreeing
    with the stored lists, and explain=true dropping or reordering the stored list."""
    client = rerank_server["client"]
    meta = client.get("/metadata").json()
    assert meta["model"] == "rerank" and meta["rerank_precomputed"] is True
    for user_id in rerank_users(rerank_server):
        expected = offline_list(rerank_server, user_id)
        length = len(expected)
        assert length == 20
        for k in (3, 10, 20, 30):
            answer = client.post("/recommend", json={"user_id": user_id, "k": k}).json()
            assert answer["model"] == "rerank"
            items = [i["item_id"] for i in answer["items"]]
            stored = expected.head(k)
            assert items[:length] == stored["item_id"].tolist(), (user_id, k)
            np.testing.assert_allclose([i["score"] for i in answer["items"]][:length], stored["score"], rtol=1e-5)
            assert len(items) == k if k <= length else len(items) > length  # the online stage lists more
        explained = client.post("/recommend", json={"user_id": user_id, "k": 5, "explain": True}).json()
        assert [i["item_id"] for i in explained["items"]] == expected["item_id"].head(5).tolist()
        assert all(f'"{i["title"]}"' in i["explanation"] for i in explained["items"])


def test_rerank_exclude_seen_false_is_not_answered_from_the_stored_lists(rerank_server):
    """Catches exclude_seen=false ignored by the precomputed path (the stored lists leave the history out): the
    answer must be the online second stage over lists that keep the history, and exclude_seen=true never lists a
    history item."""
    client = rerank_server["client"]
    directory = rerank_server["package"]
    users = [v.item() if hasattr(v, "item") else v for v in pd.read_parquet(directory / "users.parquet")["user_id"]]
    with np.load(directory / "history.npz") as history:
        indptr, history_items = history["indptr"], history["items"]
    items = pd.read_parquet(directory / "items.parquet")["item_id"].tolist()
    with_history = differs = 0
    for user_id in rerank_users(rerank_server):
        user = users.index(user_id)
        seen = {items[i] for i in history_items[indptr[user] : indptr[user + 1]]}
        on = client.post("/recommend", json={"user_id": user_id, "k": 10, "exclude_seen": True}).json()
        off = client.post("/recommend", json={"user_id": user_id, "k": 10, "exclude_seen": False}).json()
        assert off["model"] == "rerank" and len(off["items"]) == 10
        assert not {i["item_id"] for i in on["items"]} & seen
        with_history += bool({i["item_id"] for i in off["items"]} & seen)
        differs += [i["item_id"] for i in on["items"]] != [i["item_id"] for i in off["items"]]
    assert with_history >= USERS // 2 and differs >= USERS // 2


def test_rerank_feedback_leaves_the_stored_list_without_the_bought_items(rerank_server):
    """Catches the precomputed lookup bypassing /feedback's exclusions over HTTP, and the stored list cut to k
    before the exclusion (a list shorter than k)."""
    client = rerank_server["client"]
    users = rerank_server["offline"]["user_id"].drop_duplicates().to_list()
    user_id, other_id = users[-1], users[0]
    expected = offline_list(rerank_server, user_id)["item_id"].tolist()
    other = client.post("/recommend", json={"user_id": other_id, "k": 10}).json()
    events = [
        {"user_id": user_id, "item_id": expected[0], "event": "purchase"},
        {"user_id": user_id, "item_id": expected[3], "event": "rating", "rating": 2.0},
        {"user_id": user_id, "item_id": expected[5], "event": "click"},
    ]
    assert client.post("/feedback", json={"events": events}).json()["stored"] == 3
    after = client.post("/recommend", json={"user_id": user_id, "k": 10}).json()  # staleness 0: read at once
    left = [item for item in expected if item not in (expected[0], expected[3])]
    assert [i["item_id"] for i in after["items"]] == left[:10]
    assert client.post("/recommend", json={"user_id": other_id, "k": 10}).json() == other
