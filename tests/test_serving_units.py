"""The serving pieces on their own, without a trained model: reading lines and chunks, the resume bookkeeping,
and how an engine of several adapters groups and answers requests."""

import io
import json

import pytest
from transformers import BertTokenizerFast

from tests.fakes import Peak
from toolkit.config import QAConfig
from toolkit.inference import SINGLE, Engine, EngineError, Served
from toolkit.serving import Query, ServeError, Summary, answer_queries, query_from_record
from toolkit.serving.answer_file import ServeConfig, read_chunks, read_lines
from toolkit.serving.partial_output import keep_whole_chunks


def test_read_lines_skips_long_lines_in_pieces_and_keeps_line_ends_apart():
    stream = io.BytesIO(b"one\r\n" + b"x" * 50 + b"\n\nlast-without-newline")
    assert list(read_lines(stream, max_bytes=30)) == [b"one", 50, b"", b"last-without-newline"]
    exact = io.BytesIO(b"0123456789\n0123456789\r\n01234567890\n")
    assert list(read_lines(exact, max_bytes=10)) == [b"0123456789", b"0123456789", 11]


def test_read_chunks_numbers_lines_across_chunks_skips_and_starts_mid_file():
    lines = [json.dumps({"id": f"q{i}", "question": "q?", "context": "c"}).encode() for i in range(1, 8)]
    stream = io.BytesIO(b"\n".join(lines) + b"\n")
    chunks = list(read_chunks(stream, ServeConfig(chunk_size=3)))
    assert [[q.line for q in c] for c in chunks] == [[1, 2, 3], [4, 5, 6], [7]]
    assert [q.id for q in chunks[1]] == ["q4", "q5", "q6"]
    stream.seek(0)
    assert [q.line for c in read_chunks(stream, ServeConfig(chunk_size=3), skip=5) for q in c] == [6, 7]
    stream.seek(len(lines[0]) + 1)  # a reader that starts at the second line of the file
    assert [q.line for q in next(read_chunks(stream, ServeConfig(chunk_size=2), first=1))] == [2, 3]


def test_keep_whole_chunks_cuts_back_to_the_last_whole_chunk_and_counts_it(tmp_path):
    rows = [{"id": str(i), "line": i, "answer": "a", "no_answer": i == 2} for i in range(1, 6)]
    partial = tmp_path / "p"
    partial.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + b'{"id": "6", "li')
    summary = Summary()
    assert keep_whole_chunks(partial, 2, summary) == 4
    assert partial.read_bytes().count(b"\n") == 4 and (summary.answered, summary.no_answer) == (3, 1)
    partial.write_bytes(json.dumps({"id": "x", "line": 3}).encode() + b"\n")
    with pytest.raises(ServeError, match="not a serve-batch partial output"):
        keep_whole_chunks(partial, 2, Summary())


@pytest.mark.parametrize("record, message", [
    ([], "expected a JSON object"), ({"question": "q"}, "missing field 'context'"),
    ({"question": "q", "context": 3}, "field 'context' must be a string"), ({"question": " ", "context": "c"},
                                                                              "empty field 'question'"),
    ({"id": True, "question": "q", "context": "c"}, "field 'id' must be"),
    ({"question": "q", "context": "c", "adapter": 1}, "field 'adapter' must be a string")])
def test_query_from_record_names_the_field(record, message):
    assert message in query_from_record(record, 1).error.message


@pytest.fixture
def two_adapters(vocab_file):
    tokenizer = BertTokenizerFast(vocab_file=vocab_file)
    qa = QAConfig(base_model="test", model_type="bert", max_question_tokens=8)
    models = {"first": Served(Peak(5, "first"), qa), "second": Served(Peak(6, "second"), qa)}
    return Engine(models, tokenizer, default="second")


def test_requests_are_grouped_by_adapter_and_never_batched_across(two_adapters):
    context = "alpha beta gamma delta"  # [CLS] q ? [SEP] alpha beta ...: token 5 = beta, 6 = gamma
    queries = [Query(1, "a", "q?", context, "first"), Query(2, "b", "q?", context), Query(3, "c", "q?", context, "third"),
               Query(4, "d", "q?", context, "first"), Query(5, "e", "why " * 20 + "?", context, "first")]
    rows = answer_queries(two_adapters, queries)
    assert [r.get("answer") for r in rows] == ["beta", "gamma", None, "beta", None]
    assert [r.get("adapter") for r in rows] == ["first", "second", None, "first", None]
    assert "unknown adapter 'third' (served: first, second)" in rows[2]["error"]
    assert "question too long" in rows[4]["error"]
    assert len(two_adapters.served("first").predictor.batches) == 1  # lines 1 and 4 in one batch, 2 apart


def test_engine_resolves_adapters_and_refuses_what_it_does_not_serve(two_adapters, vocab_file):
    assert two_adapters.adapters == ["first", "second"] and two_adapters.resolve(None) == "second"
    with pytest.raises(EngineError, match="unknown adapter 'x'"):
        two_adapters.served("x")
    single = Engine.single(Peak(5, "fp32"), BertTokenizerFast(vocab_file=vocab_file),
                           QAConfig(base_model="t", model_type="bert"))
    assert single.adapters == [] and single.resolve(None) == SINGLE
    with pytest.raises(EngineError, match="serves no adapters"):
        single.served("first")
    with pytest.raises(ValueError, match="2 questions but 1 contexts"):
        single.answer(["a?", "b?"], ["c"])
    with pytest.raises(EngineError, match="'third' is not among the adapters"):
        Engine(two_adapters.models, two_adapters.tokenizer, default="third")


def test_answer_options_check_their_values_and_count_the_tokenizers_special_tokens():
    from toolkit.options import AnswerOptions, OptionError

    for bad, message in (({"top_k": 25}, "'top_k' must be at most 20"), ({"top_k": 0}, "'top_k' must be at least 1"),
                         ({"top_k": "3"}, "'top_k' must be an integer, got string"),
                         ({"align_to_words": 1}, "'align_to_words' must be true or false, got integer")):
        with pytest.raises(OptionError, match=message):
            AnswerOptions(**bad)
    assert AnswerOptions().with_parameters({"top_k": None, "max_answer_len": 3}) == AnswerOptions(max_answer_len=3)
    qa = QAConfig(base_model="t", model_type="mpnet")
    # <s> q </s></s> c </s>: 4 special tokens leave 64 - 5 - 4 = 55 context tokens, so a stride of 55 is refused
    options = AnswerOptions(max_seq_len=64, max_question_len=5, doc_stride=55)
    assert options.features(qa, 512, special_tokens=3).doc_stride == 55
    with pytest.raises(OptionError, match="4 special tokens = 55"):
        options.features(qa, 512, special_tokens=4)
