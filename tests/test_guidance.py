"""Class-conditional pieces: per-class batches, the guidance-scale distribution and weights,
and the argument checks users hit at sampling time."""

import jax
import ml_collections
import numpy as np
import pytest

from fake_data import data_config, fashion_files
from lookahead_drift import guidance, input_pipeline


def _guidance(**kw):
  base = dict(num_classes=10, labels_per_step=10, pos_per_label=4, gen_per_label=4,
              neg_per_label=2, cfg_min=1.0, cfg_max=4.0, cfg_power=1.0, no_cfg_fraction=0.0)
  return guidance.Guidance(**{**base, **kw})


def _batches(name="checkerboard", start=0, count=3, **kw):
  kw = {"labels_per_step": 4, "pos_per_label": 5, "neg_per_label": 3, "seed": 7, **kw}
  it = input_pipeline.create_class_dataset(data_config(name=name, **kw.pop("data", {})),
                                           start_step=start, **kw)
  return [next(it) for _ in range(count)]


def test_toy_class_batches_hold_their_labels_points():
  for b in _batches("eight_gaussians") + _batches("checkerboard"):
    assert b["label"].shape == (4,) and b["image"].shape == (4, 5, 2)
    assert b["neg_image"].shape == (4, 3, 2) and len(set(b["label"])) == 4
  centers = input_pipeline.eight_gaussians_centers()
  for b in _batches("eight_gaussians"):  # every positive within 4σ of its label's mode
    dist = np.linalg.norm(b["image"] - centers[b["label"]][:, None], axis=-1)
    assert dist.max() < 4 * input_pipeline.EIGHT_GAUSSIANS_STD * np.sqrt(2)
  for b in _batches("checkerboard"):  # ... inside its label's square
    cell = b["label"][:, None]
    row, col = cell // 2, 2 * (cell % 2) + (cell // 2) % 2
    lo = np.stack([col, row], -1) * 2.0 - 4.0
    assert np.all((b["image"] >= lo) & (b["image"] <= lo + 2.0))


@pytest.mark.parametrize("name", ["checkerboard", "fashion_mnist"])
def test_class_batches_resume_and_split_over_processes(tmp_path, name):
  data = {}
  if name == "fashion_mnist":
    fashion_files(str(tmp_path), n_train=200)
    data = {"data_dir": str(tmp_path), "random_flip": True}
  whole = _batches(name, count=4, data=data)
  resumed = _batches(name, start=2, count=2, data=data)
  for a, b in zip(whole[2:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  parts = [_batches(name, count=4, data=data, process_index=p, process_count=2)
           for p in range(2)]
  for step, b in enumerate(whole):
    for k in b:
      np.testing.assert_array_equal(np.concatenate([p[step][k] for p in parts]), b[k])
  assert not np.array_equal(whole[0]["label"], whole[1]["label"])  # labels vary by step


def test_image_class_batches_are_that_class(tmp_path):
  arrays = fashion_files(str(tmp_path), n_train=300)
  images, labels = arrays["train"]
  lookup = {images[i].tobytes(): labels[i] for i in range(len(images))}
  for b in _batches("fashion_mnist", data={"data_dir": str(tmp_path)}, labels_per_step=10):
    assert list(b["label"]) == list(range(10))  # every class each step when C = classes
    raw = np.round((b["image"][..., 0] + 1) * 127.5).astype(np.uint8)
    for c, row in zip(b["label"], raw):
      assert all(lookup[img.tobytes()] == c for img in row)
      assert len({img.tobytes() for img in row}) == len(row)  # no repeats within a label


def test_class_batch_errors_name_the_value(tmp_path):
  with pytest.raises(ValueError, match="labels_per_step=9"):
    _batches("checkerboard", labels_per_step=9)
  with pytest.raises(ValueError, match="divisible"):
    _batches("checkerboard", labels_per_step=3, process_count=2)
  fashion_files(str(tmp_path), n_train=30)
  with pytest.raises(ValueError, match="pos_per_label=40"):
    _batches("fashion_mnist", data={"data_dir": str(tmp_path)}, pos_per_label=40)


def test_alpha_distribution_range_and_forced_ones():
  rng = jax.random.PRNGKey(0)
  log_uniform = np.asarray(guidance.sample_alpha(rng, 20000, _guidance(cfg_power=1.0)))
  assert log_uniform.min() >= 1.0 and log_uniform.max() <= 4.0
  assert abs(np.median(log_uniform) - 2.0) < 0.05  # median of log-uniform on [1, 4]: 2
  uniform = np.asarray(guidance.sample_alpha(rng, 20000, _guidance(cfg_power=0.0)))
  assert abs(uniform.mean() - 2.5) < 0.03
  # density ∝ α^-2 on [1, 4]: CDF (1 − 1/α) / (3/4), so P(α < 2) = 2/3
  steep = np.asarray(guidance.sample_alpha(rng, 20000, _guidance(cfg_power=2.0)))
  assert abs(np.mean(steep < 2.0) - 2 / 3) < 0.015
  ones = np.asarray(guidance.sample_alpha(rng, 20000, _guidance(cfg_min=2.0,
                                                                no_cfg_fraction=0.25)))
  assert abs(np.mean(ones == 1.0) - 0.25) < 0.015 and ones[ones != 1.0].min() >= 2.0


def test_negative_weights_and_rows_by_label():
  g = _guidance(gen_per_label=9, neg_per_label=4)
  w = np.asarray(guidance.negative_weights(np.array([1.0, 3.0]), g))
  np.testing.assert_allclose(w, [[0.0] * 4, [2.0 * 8 / 4] * 4])
  feats = {"f": np.arange(2 * 6 * 3).reshape(2, 6, 3)}  # [G=2, C·K=3·2, D=3], label-major
  rows = guidance.rows_by_label(feats, 3)["f"]
  assert rows.shape == (3, 2, 2, 3)
  np.testing.assert_array_equal(rows[1, 0], feats["f"][0, 2:4])  # label 1, group 0
  np.testing.assert_array_equal(rows[2, 1], feats["f"][1, 4:6])


def test_user_errors_name_the_value():
  with pytest.raises(ValueError, match="label 10 is outside"):
    guidance.check_labels([0, 3, 10], 10)
  with pytest.raises(ValueError, match="label -1"):
    guidance.check_labels([-1], 10)
  np.testing.assert_array_equal(guidance.check_labels([0, 9], 10), [0, 9])
  g = _guidance(cfg_min=1.0, cfg_max=4.0)
  with pytest.raises(ValueError, match="cfg_scale 5 is outside"):
    guidance.check_alpha(5.0, g)
  assert guidance.check_alpha(1.0, _guidance(cfg_min=2.0)) == 1.0
  with pytest.raises(ValueError, match="neg_per_label"):
    _guidance(neg_per_label=0)
  with pytest.raises(ValueError, match="cfg_min"):
    _guidance(cfg_min=0.5)


def test_from_config_checks_the_model_and_batch():
  config = ml_collections.ConfigDict({
      "data": {"name": "fashion_mnist", "batch_size": 40},
      "model": {"num_classes": 10, "alpha_conditioning": True},
      "conditional": {"labels_per_step": 10, "gen_per_label": 8, "neg_per_label": 4,
                      "cfg_min": 1.0, "cfg_max": 3.0, "cfg_power": 1.0,
                      "no_cfg_fraction": 0.1}})
  g = guidance.from_config(config)
  assert (g.pos_per_label, g.gen_per_label, g.num_classes) == (4, 8, 10)
  config.data.batch_size = 45
  with pytest.raises(ValueError, match="batch_size=45"):
    guidance.from_config(config)
  config.data.batch_size = 40
  config.model.num_classes = 0
  with pytest.raises(ValueError, match="num_classes"):
    guidance.from_config(config)
  config.conditional.labels_per_step = 0
  assert guidance.from_config(config) is None
