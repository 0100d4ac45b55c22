import pytest
import torch

from clipedu import preset
from clipedu.data import ShapesWorld
from clipedu.loop import History
from clipedu.supervised import (
    ClassifierLoop,
    HeadOnTower,
    classifier_config,
    fit_head,
    predict_classes,
    train_classifier,
)
from clipedu.vision import VisionTransformer, ViTClassifier


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


def test_a_finished_run_only_loads_with_resume_auto(data, tmp_path, monkeypatch):
    cfg = classifier_config(steps=4, batch_size=32, log_every=1)
    trained = _model()
    first = train_classifier(trained, data, "shape", cfg, device="cpu", out_dir=tmp_path, resume="auto", progress=False)
    assert first.seconds > 0
    saved = (tmp_path / "checkpoint.pt").read_bytes()

    def no_step(self, batch):
        raise AssertionError("a finished run trained again")

    monkeypatch.setattr(ClassifierLoop, "train_step", no_step)
    loaded = _model()
    torch.nn.init.zeros_(loaded.head.weight)  # other weights than the run's: loading must replace them
    again = train_classifier(loaded, data, "shape", cfg, device="cpu", out_dir=tmp_path, resume="auto", progress=False)
    assert again.seconds == first.seconds and again.loss == first.loss  # the seconds the run took, kept
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved  # loading never writes the file again
    for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_fit_head_is_a_deterministic_probe_on_frozen_features():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 10, generator=g) * 3
    labels = torch.arange(90) % 3
    features = centres[labels] + torch.randn(90, 10, generator=g)
    head = fit_head(features, labels, 3, seed=1)
    assert isinstance(head, torch.nn.Linear) and (head.in_features, head.out_features) == (10, 3)
    assert (head(features).argmax(1) == labels).float().mean() == 1.0
    again = fit_head(features, labels, 3, seed=1)
    other = fit_head(features, labels, 3, seed=2)
    assert torch.equal(head.weight, again.weight) and not torch.equal(head.weight, other.weight)
    assert not features.requires_grad
    with pytest.raises(ValueError, match=r"expected features \(N, D\) and labels \(N,\)"):
        fit_head(features, labels[:5], 3)


def test_head_on_tower_trains_the_head_alone_when_the_tower_is_frozen(data):
    torch.manual_seed(0)
    cfg = preset("tiny", vision_width=32, vision_layers=1, vision_heads=2).vision
    tower = VisionTransformer(cfg, embed_dim=16)
    model = HeadOnTower(tower, 8)
    assert model(torch.rand(4, 3, 32, 32)).shape == (4, 8)
    frozen = {k: v.clone() for k, v in tower.state_dict().items()}
    tower.requires_grad_(False)
    head_before = model.head.weight.clone()
    train_classifier(model, data, "colour", classifier_config(steps=5, batch_size=32), device="cpu", progress=False)
    assert all(torch.equal(frozen[k], v) for k, v in tower.state_dict().items())  # the probe leaves the tower as it was
    assert not torch.equal(head_before, model.head.weight)
    # a head that starts fine-tuning must fit the tower
    with pytest.raises(ValueError, match="the head should map 32 features to 8 classes, got 10 -> 8"):
        HeadOnTower(tower, 8, torch.nn.Linear(10, 8))
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        HeadOnTower(tower, 1)
