import pytest
import torch

from clipedu import preset
from clipedu.data import ShapesWorld
from clipedu.loop import History
from clipedu.supervised import ClassifierLoop, classifier_config, predict_classes, train_classifier
from clipedu.vision import ViTClassifier


@pytest.fixture(scope="module")
def data():
    return ShapesWorld(seed=0).generate(256, "train")


def _model(num_classes=8):
    torch.manual_seed(0)
    cfg = preset("tiny", vision_width=32, vision_layers=1, vision_heads=2).vision
    return ViTClassifier(cfg, num_classes)


def test_learns_an_easy_attribute_well_above_chance(data):
    model = _model()
    history = train_classifier(model, data, "colour", classifier_config(steps=40, batch_size=64, lr=3e-3),
                               device="cpu", progress=False)
    assert isinstance(history, History)
    assert history.step[0] == 1 and history.step[-1] == 40 and len(history.loss) == len(history.lr)
    assert history.loss[-1] < history.loss[0] - 0.5
    accuracy = (predict_classes(model, data) == data.labels["colour"]).float().mean().item()
    assert accuracy > 0.5  # chance is 1/8
    assert not model.training


def test_same_seed_same_run(data):
    runs = []
    for _ in range(2):
        model = _model()
        runs.append(train_classifier(model, data, "shape", classifier_config(steps=5, batch_size=32, log_every=1),
                                     device="cpu", progress=False).loss)
    assert runs[0] == runs[1]


def test_predict_classes_takes_data_or_images(data):
    model = _model()
    by_data = predict_classes(model, data, batch_size=100)
    by_images = predict_classes(model, data.images[:50])
    assert by_data.shape == (256,) and by_data.dtype == torch.long
    assert torch.equal(by_data[:50], by_images)


def test_bad_input_is_explained(data):
    with pytest.raises(ValueError, match="no labels 'texture'"):
        train_classifier(_model(), data, "texture", classifier_config(steps=2), device="cpu", progress=False)
    with pytest.raises(ValueError, match="9 classes|expected \\(32, 9\\)"):
        train_classifier(_model(num_classes=8), data, "position", classifier_config(steps=2, batch_size=32),
                         device="cpu", progress=False)
    with pytest.raises(ValueError, match="warmup_steps"):
        classifier_config(steps=2, warmup_steps=2)


def test_the_classifier_resumes_exactly_from_its_checkpoint(data, tmp_path):
    cfg = classifier_config(steps=6, batch_size=32, log_every=1, checkpoint_every=2)
    full = train_classifier(_model(), data, "shape", cfg, device="cpu", progress=False)

    class Interrupt(Exception):
        pass

    def stop(loop):
        if loop.step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        ClassifierLoop(_model(), data, "shape", cfg, torch.device("cpu"), tmp_path).fit(progress=False, callback=stop)
    resumed = train_classifier(_model(), data, "shape", cfg, device="cpu", out_dir=tmp_path, resume=True,
                               progress=False)
    assert resumed.loss == full.loss and resumed.accuracy == full.accuracy
