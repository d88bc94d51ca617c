"""FID through torchmetrics: standard Inception from a local weights file, and SynthFace-FID.

The Inception weights are random but of the real architecture: torch-fidelity's own
``FeatureExtractorInceptionV3`` is built with its weight loading turned into a no-op, and its
state dict (every key and shape of the real module) is re-initialised and written to a file.
"""
import pickle

import pytest
import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from unif2ace.eval.attribute_classifier import AttributeClassifier, ClassifierConfig
from unif2ace.eval.fid import FIDError, compute_fid, inception_fid, synthface_fid


class _ArchitectureOnly(FeatureExtractorInceptionV3):
    """The real InceptionV3 layout; skips loading so its freshly built parameters survive."""

    def load_state_dict(self, state_dict, *args, **kwargs):
        return None


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("inception")
    empty = d / "empty.pth"
    torch.save({}, empty)
    torch.manual_seed(0)
    net = _ArchitectureOnly("probe", ["2048"], feature_extractor_weights_path=str(empty))
    # PyTorch's default init shrinks activations layer after layer (pool features ~1e-8 at
    # depth 90); He init keeps them O(1) so FID differences are far above float noise.
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    sd = net.state_dict()
    assert any(k.startswith("Mixed_7c.") for k in sd) and sd["fc.weight"].shape == (1008, 2048)
    path = d / "weights-inception-random.pth"
    torch.save(sd, path)
    return path, sd


def _batches(seed, shift=0, n=8, size=48):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 190, (n, 3, size, size), generator=g).add(shift).clamp(0, 255).to(torch.uint8)
    return [x[: n // 2], x[n // 2:]]


def test_inception_from_local_file_identical_zero_shifted_larger(inception_file):
    path, _ = inception_file
    metric = inception_fid(path, feature=64)
    real = _batches(0)
    same = compute_fid(metric, real, real)
    small = compute_fid(metric, real, _batches(0, shift=20))
    large = compute_fid(metric, real, _batches(0, shift=60))
    assert abs(same) < 1e-6 * large
    assert 0 < small < large


def test_inception_2048_features_come_from_the_file(inception_file):
    path, sd = inception_file
    metric = inception_fid(path)  # standard 2048-d pool features
    assert torch.equal(metric.inception.fc.weight, sd["fc.weight"])
    assert torch.equal(metric.inception.Mixed_7c.branch_pool.conv.weight, sd["Mixed_7c.branch_pool.conv.weight"])
    feats = metric.inception(_batches(0, n=2)[0])  # one image: a full 299² forward is seconds on CPU
    assert feats.shape == (1, 2048) and torch.isfinite(feats).all() and feats.std() > 1e-3


def test_inception_bad_files_name_the_file(inception_file, tmp_path):
    path, sd = inception_file
    with pytest.raises(FIDError, match="not found"):
        inception_fid(tmp_path / "nope.pth")
    wrong = tmp_path / "wrong_keys.pth"
    torch.save({k.replace("Mixed_5b", "Mixed_5x"): v for k, v in sd.items()}, wrong)
    with pytest.raises(FIDError, match="wrong_keys.pth.*InceptionV3"):
        inception_fid(wrong, feature=64)
    # a pickle carrying an arbitrary object is refused before torch-fidelity's unrestricted load
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"fc.weight": torch.zeros(1), "x": object()}, protocol=2))
    with pytest.raises(FIDError, match="evil.pth"):
        inception_fid(evil, feature=64)


def test_synthface_fid_with_classifier_features():
    torch.manual_seed(0)
    clf = AttributeClassifier(ClassifierConfig(categories={"colour": ["red", "blue"], "shape": ["a", "b", "c"]},
                                               image_size=32, widths=[8, 16, 24]))
    metric = synthface_fid(clf)
    assert metric.inception.num_features == 24
    real = _batches(0, n=40, size=32)
    same = compute_fid(metric, real, real)
    small = compute_fid(metric, real, _batches(0, shift=15, n=40, size=32))
    large = compute_fid(metric, real, _batches(0, shift=60, n=40, size=32))
    assert abs(same) < 1e-6 * large
    assert 0 < small < large
    # the metric's train() must not switch the classifier to training mode (BatchNorm, dropout)
    metric.train()
    assert not clf.training
    # other input sizes are resized to the classifier's
    assert clf.features(_batches(0, n=4, size=64)[0]).shape == (2, 24)
