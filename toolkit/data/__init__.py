"""SQuAD-format sources -> validated examples.

A source spec is a file (nested SQuAD ``.json``, v1.1 or v2.0, or flat ``.jsonl``), a built-in source
(``squad-v1.1-train``, ``squad-v1.1-dev``; the SQuAD 2.0 articles ``squad2-slice``, ``squad2-dev-train``,
``squad2-train-first10``: toolkit.data.builtin) or a Hugging Face Hub dataset name (``squad_v2``), optionally
followed by ``?key=value&...`` selectors:

- ``articles=A,B``         keep only these article titles (nested JSON)
- ``exclude-articles=A,B`` drop these article titles
- ``samples=N``            a seeded random subset of N examples of this source
- ``split=NAME``           the split of a hub dataset (default: train / validation), or of squad2-slice:
                           ``tune`` (its 3 threshold-tuning articles) or ``heldout`` (its 7 evaluation articles)
- ``negatives=R``          add synthetic unanswerable questions (seeded) until a share R (0 <= R < 1)
                           of this source is unanswerable: answerable questions paired with a context
                           that does not hold their answer; ids get a ``-neg`` suffix
- ``negative-kind=K``      how: ``paragraph``, the question with another paragraph of the same article
                           holding none of the answers; ``sentence``, with its own paragraph without the
                           sentence(s) holding the answer; ``swap``, its own paragraph but a question
                           whose name or number that the paragraph holds is swapped for one of the same
                           kind from another article's questions that the paragraph does not hold
                           (SQuAD 2.0's "entity swap"); ``mix`` (default) = ``paragraph,sentence``; a
                           comma list alternates its kinds. A question where its kind is impossible
                           gets ``paragraph``, else ``sentence``, instead
- ``repeat=K``             the source's questions K times (after the selectors above), to weigh a small
                           source in a mix; copies after the first get ids with a ``-rN`` suffix
"""

from toolkit.cache import default_cache_dir, sha256_file
from toolkit.data.builtin import MIRROR_FILES, PACKAGED, mirror_file
from toolkit.data.negatives import question_terms
from toolkit.data.records import DataError, Example, SourceReport, references, write_jsonl
from toolkit.data.sources import load_examples, load_source, parse_spec

__all__ = ["DataError", "Example", "MIRROR_FILES", "PACKAGED", "SourceReport", "default_cache_dir", "load_examples",
           "load_source", "mirror_file", "parse_spec", "question_terms", "references", "sha256_file", "write_jsonl"]
