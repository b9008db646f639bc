"""VQA evaluator: question construction and answer parsing with a fake model; offline errors."""
import pytest
from PIL import Image

from eraselab.errors import EraseLabError
from eraselab.evaluators import get_evaluator
from eraselab.evaluators.vqa import parse_answer
from eraselab.probes import Probe


class FakeVQA:
    """Answers from a table keyed by (image colour, question); records what it was asked."""

    name = "fake-vqa"

    def __init__(self, table):
        self.table = table
        self.asked = []

    def answer(self, images, questions):
        self.asked.extend(zip([im.getpixel((0, 0)) for im in images], questions))
        return [self.table[(im.getpixel((0, 0)), q)] for im, q in zip(images, questions)]


RED, GRAY = (255, 0, 0), (128, 128, 128)


def test_questions_per_concept_and_parsed_answers():
    fake = FakeVQA({(RED, "what color is the car?"): "It's Red.",
                    (RED, "what color is the bus?"): "the bus is RED too",
                    (GRAY, "what color is the car?"): "Grey",
                    (GRAY, "what color is the bus?"): "I am not sure"})
    ev = get_evaluator("vqa", model=fake)
    probes = [Probe("a red car and a blue bus", concepts=("car", "bus")),
              Probe("a gray car and a bus", concepts=("car", "bus")), Probe("an empty street")]
    images = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), GRAY), Image.new("RGB", (8, 8), GRAY)]
    rows = ev.judge(images, probes)
    assert fake.asked == [(RED, "what color is the car?"), (RED, "what color is the bus?"),
                          (GRAY, "what color is the car?"), (GRAY, "what color is the bus?")]
    assert rows[0]["answers"] == {"car": "red", "bus": "red"}  # the bus took the car's colour: a leak
    assert rows[0]["labels"] == ["red car", "red bus"]
    assert rows[1]["answers"] == {"car": "gray", "bus": "i am not sure"}
    assert rows[1]["raw_answers"]["car"] == "Grey"
    assert rows[2] == {"questions": {}, "raw_answers": {}, "answers": {}, "labels": [], "scores": {}}
    cfg = ev.identity()["config"]
    assert cfg["model"] == "fake-vqa" and cfg["question"] == "what color is the {object}?"


def test_other_attributes_and_custom_questions():
    fake = FakeVQA({(RED, "what is the cup made of?"): "a wooden cup",
                    (RED, "is the cup shiny?"): "Yes."})
    rows = get_evaluator("vqa", model=fake, attribute="material").judge(
        [Image.new("RGB", (8, 8), RED)], [Probe("a cup", concepts=("cup",))])
    assert rows[0]["answers"] == {"cup": "wood"}
    rows = get_evaluator("vqa", model=fake, question="is the {object} shiny?", values=["yes", "no"]).judge(
        [Image.new("RGB", (8, 8), RED)], [Probe("a cup", concepts=("cup",))])
    assert rows[0]["answers"] == {"cup": "yes"}


def test_parse_answer():
    colors = ("red", "blue", "gray")
    assert parse_answer("Blue!", colors) == "blue"
    assert parse_answer("it is a dark grey colour", colors) == "gray"
    assert parse_answer("The answer is: teal", colors) == "teal"
    assert parse_answer("  ", colors) == ""


def test_errors():
    with pytest.raises(EraseLabError, match="needs a model"):
        get_evaluator("vqa")
    with pytest.raises(EraseLabError, match="no question known"):
        get_evaluator("vqa", model=FakeVQA({}), attribute="smell")
    with pytest.raises(EraseLabError, match="has no"):
        get_evaluator("vqa", model=FakeVQA({}), question="what colour?")

    class Mute:
        def answer(self, images, questions):
            return []

    with pytest.raises(EraseLabError, match="0 answers to 1 questions"):
        get_evaluator("vqa", model=Mute()).judge(
            [Image.new("RGB", (8, 8))], [Probe("a car", concepts=("car",))]
        )


def test_offline_missing_model_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EraseLabError) as err:
        get_evaluator("vqa", model="nobody-here/no-such-vqa")
    assert "\n" not in str(err.value) and "hf download nobody-here/no-such-vqa" in str(err.value)
    with pytest.raises(EraseLabError, match="could not load the VQA model"):
        get_evaluator("vqa", model=str(tmp_path))  # an empty folder


def test_a_real_vqa_head_model_from_a_folder(tmp_path):
    """A tiny random ViLT saved to a folder: the classifier-head path loads, asks and maps ids to labels."""
    import torch
    from transformers import (
        BertTokenizer,
        ViltConfig,
        ViltForQuestionAnswering,
        ViltImageProcessor,
        ViltProcessor,
    )

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "color", "is", "the", "car", "bus", "?"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    processor = ViltProcessor(image_processor=ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=32),
                              tokenizer=BertTokenizer(str(tmp_path / "vocab.txt")))
    torch.manual_seed(0)
    config = ViltConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, image_size=32, patch_size=16, max_position_embeddings=40,
                        id2label={0: "red", 1: "blue"}, label2id={"red": 0, "blue": 1}, max_image_length=-1)
    model = ViltForQuestionAnswering(config)
    with torch.no_grad():  # make the head answer "blue" whatever it sees
        model.classifier[-1].weight.zero_()
        model.classifier[-1].bias.copy_(torch.tensor([0.0, 5.0]))
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    ev = get_evaluator("vqa", model=str(tmp_path))
    assert ev.identity()["config"]["task"] == "visual-question-answering"
    rows = ev.judge(
        [Image.new("RGB", (64, 48), RED)], [Probe("a red car and a blue bus", concepts=("car", "bus"))]
    )
    assert rows[0]["answers"] == {"car": "blue", "bus": "blue"}
