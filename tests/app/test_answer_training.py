"""`pmcqa train-answerer`: the fine-tuned sentence scorer, the model file it writes, and how the extractive
backend and `pmcqa eval --answers` pick it up.

Training runs for real (sentence-transformers on CPU) on a small SQuAD file cut from COVID-QA train: five
papers trimmed to their first characters, a few questions each, so one epoch takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path

from pmcqa.app import answer_training
from pmcqa.app.answer_evaluation import run_answer_evaluation, token_f1
from pmcqa.app.answer_training import (
    TARGET_ANSWERED,
    THRESHOLD_STEP,
    TrainingOptions,
    choose_threshold,
    is_held_out,
    train_answerer,
)
from pmcqa.app.answering import span_reader
from pmcqa.app.answering.extractive import (
    ANSWER_FEATURES,
    ANSWER_MODEL_DIR,
    ANSWER_MODEL_FILE,
    DEFAULT_MIN_CONFIDENCE,
    ExtractiveBackend,
    find_answer_model,
    read_answer_model,
)
from pmcqa.core.settings import Settings
from pmcqa.index.embedding import Embedder
from pmcqa.index.onnx_backend import MANIFEST_FILE, source_fingerprint

CONTEXT_CHARS = 6000
QUESTIONS_PER_PAPER = 6


def small_squad(source: Path, target: Path, tuning: int = 3, held_out: int = 2) -> Path:
    """A SQuAD file of `tuning` + `held_out` COVID-QA papers (by `is_held_out` of the id training gives
    them), each cut to its first `CONTEXT_CHARS` characters with the questions answered there."""
    from pmcqa.app.evaluation import context_to_paper, reserved_pmcid

    wanted = {False: tuning, True: held_out}
    articles = []
    for article in json.loads(source.read_text(encoding="utf-8"))["data"]:
        paragraph = article["paragraphs"][0]
        paper = context_to_paper(paragraph["context"])
        paper_id = paper.pmcid or reserved_pmcid(str(paragraph.get("document_id")), 0)
        side = is_held_out(paper_id)
        context = paragraph["context"][:CONTEXT_CHARS]
        qas = [
            qa
            for qa in paragraph["qas"]
            if all(a["answer_start"] + len(a["text"]) <= len(context) for a in qa["answers"])
        ][:QUESTIONS_PER_PAPER]
        if wanted[side] and len(qas) >= 3:
            wanted[side] -= 1
            articles.append(
                {
                    "title": article.get("title", ""),
                    "paragraphs": [{**paragraph, "context": context, "qas": qas}],
                }
            )
        if not any(wanted.values()):
            break
    target.write_text(json.dumps({"version": "test", "data": articles}), encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """One real training run: the SQuAD file, the model folder and the record."""
    root = tmp_path_factory.mktemp("training")
    squad = small_squad(shared_path("covid-qa/train.json"), root / "small.json")
    settings = Settings(data_dir=root / "data")
    output = root / "model"
    record = train_answerer(
        squad,
        settings,
        TrainingOptions(epochs=2, batch_size=8, learning_rate=1e-4, reader_epochs=15),
        store_dir=root / "store",
        output=output,
    )
    return squad, output, record


def test_training_writes_an_answer_model_with_its_record(trained) -> None:
    _, output, record = trained
    assert (output / ANSWER_MODEL_FILE).is_file()
    assert (output / "modules.json").is_file()  # a sentence-transformers model, loadable on its own
    assert json.loads((output / ANSWER_MODEL_FILE).read_text()) == record
    assert set(record["confidence"]["weights"]) == set(ANSWER_FEATURES)
    assert 0.0 <= record["min_confidence"] < 1.0
    training = record["training"]
    assert training["threshold_chosen_on"] == "held-out"
    assert training["held_out_papers"] == 2 and training["triples"] > 0
    assert 0.0 <= training["held_out_top1_trained"] <= 1.0
    model = read_answer_model(output)
    assert model.scorer == output and model.min_confidence == record["min_confidence"]
    assert not list(output.parent.glob(f".{output.name}*")), "no staging or moved-aside folder is left"


def _training_questions(squad: Path, settings: Settings) -> list[answer_training.Candidates]:
    from pmcqa.app.evaluation import load_squad, reserved_pmcid
    from pmcqa.index.library import open_library

    parts = open_library(settings.model_copy(update={"data_dir": squad.parent / "store"}), writable=False)
    try:
        questions = load_squad(squad, fallback_id=reserved_pmcid).questions
        return answer_training.ask_all(parts, settings, questions)
    finally:
        parts.close()


def test_the_span_reader_is_saved_with_the_model_and_finds_answer_phrases(trained) -> None:
    """The reader learns to point at the answer inside its sentences: on its training spans its phrases
    overlap the gold better than the whole context does, and each phrase is a piece of the context."""
    squad, output, record = trained
    assert (output / span_reader.READER_DIR / span_reader.HEAD_FILE).is_file()
    assert (output / span_reader.READER_DIR / "modules.json").is_file()  # exportable like any encoder
    assert record["training"]["reader_examples"] > 0
    settings = Settings(data_dir=squad.parent / "data", answer_model=str(output))
    backend = ExtractiveBackend(settings)
    assert backend.answer_model.reader == output / span_reader.READER_DIR
    reader = backend.reader
    assert reader is not None
    asked = _training_questions(squad, settings)
    tuning = [a for a in asked if not is_held_out(a.paper.paper_id)]
    held_out = [a for a in asked if is_held_out(a.paper.paper_id)]
    # What it was trained on: every paper's spans, held-out ones too (seed 0 as in training).
    examples = answer_training.reader_examples([*tuning, *held_out])
    assert record["training"]["reader_examples"] == len(examples) >= 10
    held_questions = {a.question.question for a in held_out}
    assert any(question in held_questions for question, *_ in examples), "held-out papers' spans are used"
    span_f1, context_f1 = [], []
    for question, context, start, end in examples:
        span = reader.read(question, context)
        assert span is not None and 0 <= span.start < span.end <= len(context)
        assert 0.0 < span.probability <= 1.0
        span_f1.append(token_f1(context[span.start : span.end], context[start:end]))
        context_f1.append(token_f1(context, context[start:end]))
    assert np.mean(span_f1) > np.mean(context_f1) + 0.1, (np.mean(span_f1), np.mean(context_f1))


def test_answers_are_the_readers_phrase_with_the_sentences_cited_whole(trained) -> None:
    squad, output, _ = trained
    settings = Settings(data_dir=squad.parent / "data", answer_model=str(output), span_min_probability=0.0)
    model = dataclasses.replace(read_answer_model(output), min_confidence=0.0)
    spans = ExtractiveBackend(settings, answer_model=model)
    whole = ExtractiveBackend(settings.model_copy(update={"answer_form": "sentences"}), answer_model=model)
    assert whole.reader is None
    asked = [a for a in _training_questions(squad, settings) if a.sentences][:5]
    for item in asked:
        short = spans.generate(item.question.question, item.passages, item.paper)
        long = whole.generate(item.question.question, item.passages, item.paper)
        assert short.cited == long.cited and short.cited
        assert any(short.answer in c.quote for c in short.cited), (short.answer, short.cited)
        assert len(short.answer) <= len(long.answer)
        assert any("span reader" in step for step in short.steps)
        assert not any("span reader" in step for step in long.steps)


def test_the_fine_tuned_scorer_prefers_answer_sentences_more_than_the_base_model(trained) -> None:
    """What fine-tuning is for: on its (question, answer sentence, hard negative) triples, the margin of the
    answer sentence over the negative grows."""
    squad, output, _ = trained
    settings = Settings(data_dir=squad.parent / "data")
    from pmcqa.index.library import open_library

    parts = open_library(settings.model_copy(update={"data_dir": squad.parent / "store"}), writable=False)
    try:
        from pmcqa.app.evaluation import load_squad, reserved_pmcid

        questions = load_squad(squad, fallback_id=reserved_pmcid).questions
        examples = answer_training.triples(answer_training.ask_all(parts, settings, questions))
    finally:
        parts.close()
    assert len(examples) >= 10

    def margin(embedder: Embedder) -> float:
        q = embedder.embed_queries([e[0] for e in examples])
        positive = embedder.embed_documents([e[1] for e in examples])
        negative = embedder.embed_documents([e[2] for e in examples])
        return float(np.mean((q * positive).sum(1) - (q * negative).sum(1)))

    base = margin(Embedder(settings))
    tuned = margin(ExtractiveBackend(settings.model_copy(update={"answer_model": str(output)})).scorer)
    assert tuned > base + 0.02, (base, tuned)


def test_eval_answers_with_the_trained_model_through_the_ask_path(trained, tmp_path: Path) -> None:
    squad, output, record = trained
    settings = Settings(data_dir=tmp_path / "data", answer_model=str(output))
    report = run_answer_evaluation(squad, settings, store_dir=squad.parent / "store")
    metrics = report.metrics()
    assert metrics["citations_valid"] == 1.0
    assert report.params["min_confidence"] == record["min_confidence"]
    assert report.params["model"] == f"extractive/trained:{output.name}"
    assert metrics["answered"] > 0


def test_auto_finds_a_trained_model_under_the_models_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", embedding_export_dir=None)
    assert find_answer_model(settings).scorer is None  # nothing trained: hand-set
    assert ExtractiveBackend(settings, embedder=object()).min_confidence == DEFAULT_MIN_CONFIDENCE  # type: ignore[arg-type]
    folder = settings.models_dir / ANSWER_MODEL_DIR
    folder.mkdir(parents=True)
    assert find_answer_model(settings).scorer is None, "a folder without its answer-model.json is not a model"
    weights = {name: 0.1 for name in ANSWER_FEATURES}
    record = {
        "ranker": {"weights": {"dense": 0.6, "lexical": 0.4}, "bias": 0.0},
        "confidence": {"weights": weights, "bias": -1.0},
        "min_confidence": 0.35,
    }
    (folder / ANSWER_MODEL_FILE).write_text(json.dumps(record))
    found = find_answer_model(settings)
    assert found.scorer == folder and found.ranker_weights == {"dense": 0.6, "lexical": 0.4}
    assert found.reader is None, "a model trained without a span reader answers with sentences"
    backend = ExtractiveBackend(settings, embedder=object())  # type: ignore[arg-type]
    assert backend.min_confidence == 0.35 and not backend.is_ready()  # its scorer loads in the background
    assert (
        ExtractiveBackend(
            settings.model_copy(update={"min_confidence": 0.5}), embedder=object()
        ).min_confidence
        == 0.5
    )  # type: ignore[arg-type]
    hand_set = settings.model_copy(update={"answer_model": "hand-set"})
    assert find_answer_model(hand_set).scorer is None


def test_unusable_answer_models_are_named_clearly(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", answer_model=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="has no answer-model.json; train one"):
        find_answer_model(settings)
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / ANSWER_MODEL_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not a readable answer model"):
        read_answer_model(folder)
    record = {
        "ranker": {"weights": {"dense": 1.0, "shoe_size": 1.0}, "bias": 0.0},
        "confidence": {"weights": {}, "bias": 0.0},
        "min_confidence": 0.2,
    }
    (folder / ANSWER_MODEL_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="shoe_size"):
        read_answer_model(folder)
    record["ranker"]["weights"] = {"dense": 1.0}
    record["min_confidence"] = 1.5
    (folder / ANSWER_MODEL_FILE).write_text(json.dumps(record))
    with pytest.raises(ValueError, match="not a probability"):
        read_answer_model(folder)


def test_a_failed_training_leaves_the_earlier_model_in_place(trained, tmp_path: Path, monkeypatch) -> None:
    squad, _, _ = trained
    earlier = tmp_path / "model"
    earlier.mkdir()
    (earlier / ANSWER_MODEL_FILE).write_text('{"earlier": true}')

    def fail(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("interrupted while fitting")

    monkeypatch.setattr(answer_training, "_fit", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        train_answerer(
            squad,
            Settings(data_dir=tmp_path / "data"),
            TrainingOptions(epochs=1, batch_size=8),
            store_dir=squad.parent / "store",
            output=earlier,
        )
    assert json.loads((earlier / ANSWER_MODEL_FILE).read_text()) == {"earlier": True}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "nothing half-written is left"


def test_a_file_without_answer_offsets_is_refused(tmp_path: Path) -> None:
    squad = tmp_path / "no-offsets.json"
    context = "Title\n\nAbstract: The incubation period was 5 days in most patients of the cohort."
    qas = [{"id": "1", "question": "How long was the incubation period?", "answers": [{"text": "5 days"}]}]
    squad.write_text(json.dumps({"data": [{"paragraphs": [{"context": context, "qas": qas}]}]}))
    with pytest.raises(ValueError, match="answer_start"):
        train_answerer(squad, Settings(data_dir=tmp_path / "data"), output=tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_the_command_refuses_a_missing_file_before_loading_torch(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from pmcqa.app.cli import main\n"
        "sys.argv = ['pmcqa', 'train-answerer', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    code = exit.code\n"
        "print('torch' in sys.modules, code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "missing.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout.split() == ["False", "2"], done.stderr
    assert "no such file" in done.stderr


def test_retraining_removes_only_the_stale_exports_of_the_same_folder(tmp_path: Path) -> None:
    target = tmp_path / "models" / ANSWER_MODEL_DIR
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    current = source_fingerprint(target)

    def export(fingerprint: str, source: Path) -> Path:
        folder = tmp_path / "models" / f"{ANSWER_MODEL_DIR}-onnx-int8-{fingerprint}"
        folder.mkdir()
        (folder / MANIFEST_FILE).write_text(json.dumps({"source": str(source.resolve())}))
        return folder

    stale, fresh = export("aaaaaaaaaaaa", target), export(current, target)
    elsewhere = export("bbbbbbbbbbbb", tmp_path / "another" / ANSWER_MODEL_DIR)  # same name, other folder
    answer_training._remove_stale_exports(tmp_path / "models", target)
    assert not stale.exists() and fresh.exists() and elsewhere.exists()


def test_the_threshold_is_the_highest_step_still_answering_the_target_share() -> None:
    assert (TARGET_ANSWERED, THRESHOLD_STEP) == (0.8, 0.05)
    confidences = [0.9, 0.8, 0.7, 0.6, 0.5, 0.42, 0.41, 0.33, 0.1, -1.0]  # -1: no candidate sentence
    assert choose_threshold(confidences) == (0.3, 0.8)  # 0.35 would answer 7 of 10
    assert choose_threshold([-1.0, -1.0, 0.05]) == (0.0, 1 / 3), (
        "nothing reaches the target: answer all it can"
    )
