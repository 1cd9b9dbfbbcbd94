"""Scores a trained Fashion-MNIST generator the way the quality issue asks, and writes it down.

  python experiments/fashion_mnist/fit.py --workdir=RUN --classifier=ENC/classifier \
      --out=experiments/fashion_mnist/results/fit [--num_samples=10000] [--config=FILE]

The run's own config (RUN/config.json) is used unless --config replaces it.

From the latest checkpoint's EMA parameters: `num_samples` one-step samples (uint8 `.npz`);
FID against the 10,000 test images and against the 60,000 training images (`--references`;
their Inception features are computed once and cached), KID against the test images (the FID
Inception of `lookahead_drift.inception`); the class shares of the samples under the trained
classifier; each sample's pixel distance to its nearest training image beside the same for the
test images (copying would show as a mass near 0); a grid of 100 samples, one predicted class
per row; all numbers in `results.json`.
"""

import json
import os
import time

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from lookahead_drift import cli, encoder_training, fid_kid, inception, inference, input_pipeline, pictures

FLAGS = flags.FLAGS
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")


def nearest_distances(queries: np.ndarray, bank: np.ndarray, chunk: int = 1000) -> np.ndarray:
  """Pixel L2 distance (images in [0, 1]) from each query to its nearest image in `bank`."""
  bank = jnp.asarray(bank.reshape(len(bank), -1), jnp.float32) / 255.0
  bank_sq = jnp.sum(bank * bank, -1)
  nearest = jax.jit(lambda q: jnp.sqrt(jnp.maximum(jnp.min(
      jnp.sum(q * q, -1)[:, None] + bank_sq[None] - 2.0 * jnp.matmul(
          q, bank.T, precision=jax.lax.Precision.HIGHEST), axis=1), 0.0)))
  out = [nearest(jnp.asarray(queries[i:i + chunk].reshape(-1, bank.shape[1]), jnp.float32)
                 / 255.0) for i in range(0, len(queries), chunk)]
  return np.concatenate([np.asarray(o) for o in out])


def label_agreement(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
  """For a conditional generator: the share of samples the classifier assigns to the label they
  were generated with, overall and per label (the classifier's own test accuracy bounds it)."""
  hit = predicted == labels
  return {"all": float(np.mean(hit)),
          **{CLASSES[c]: float(np.mean(hit[labels == c])) for c in range(num_classes)
             if np.any(labels == c)}}


def save_histogram(path: str, samples: np.ndarray, test: np.ndarray) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 3.5))
  bins = np.linspace(0, max(samples.max(), test.max()), 60)
  ax.hist(test, bins, alpha=0.6, density=True, label="test image -> nearest train image")
  ax.hist(samples, bins, alpha=0.6, density=True, label="sample -> nearest train image")
  ax.set_xlabel("pixel L2 distance (images in [0, 1])")
  ax.set_ylabel("density")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  if not set(FLAGS.references) <= {"test", "train"}:  # before any sampling
    raise ValueError(f"--references takes test and/or train, got {FLAGS.references}")
  out = FLAGS.out
  os.makedirs(out, exist_ok=True)
  start = time.perf_counter()
  state = inference.restore(FLAGS.workdir, config=FLAGS.config)
  config = state.config
  images = pictures.to_uint8(inference.generate(config, state.ema_params, FLAGS.num_samples,
                                                jax.random.PRNGKey(FLAGS.seed)))
  np.savez_compressed(os.path.join(out, "samples.npz"), images=images)
  data = dict(name="fashion_mnist", data_dir=config.data.data_dir, source="files")
  test, test_labels = input_pipeline.load_images({**data, "split": "test"})
  train_images, _ = input_pipeline.load_images({**data, "split": "train"})
  if FLAGS.max_reference:  # a quick check, not the protocol
    test, test_labels = test[:FLAGS.max_reference], test_labels[:FLAGS.max_reference]
    train_images = train_images[:FLAGS.max_reference]

  extractor = inception.FeatureExtractor(FLAGS.inception_weights, batch_size=FLAGS.batch_size)
  cache = None if FLAGS.feature_cache == "none" else (
      FLAGS.feature_cache or fid_kid.default_feature_cache())
  tic = time.perf_counter()
  feats = {"samples": extractor(images, progress=True)}
  images_per_second = len(images) / (time.perf_counter() - tic)
  if FLAGS.features_out:  # e.g. to score the first n samples against another run's n
    np.savez(FLAGS.features_out, features=feats["samples"])
  for split in FLAGS.references:
    feats[split] = fid_kid.dataset_features(
        "fashion_mnist", split, extractor, data_dir=config.data.data_dir, cache_dir=cache,
        max_images=FLAGS.max_reference or None)
  stats = {k: fid_kid.stats_from_features(v) for k, v in feats.items()}
  classify = encoder_training.load_classifier(FLAGS.classifier)
  predicted = classify(images)
  shares = np.bincount(predicted, minlength=len(CLASSES)) / len(predicted)
  num_classes = config.model.get("num_classes", 0) or 0
  agreement = ({"label_agreement": label_agreement(
      predicted, inference.cycling_labels(len(images), num_classes), num_classes)}
      if num_classes else {})  # inference.generate's default labels
  d_samples = nearest_distances(images, train_images)
  d_test = nearest_distances(test, train_images)
  results = {
      "step": int(state.step), "num_samples": int(len(images)),
      **{f"fid_vs_{split}": fid_kid.fid_from_stats(stats["samples"], stats[split])
         for split in FLAGS.references},
      **({"fid_test_vs_train": fid_kid.fid_from_stats(stats["test"], stats["train"])}
         if {"test", "train"} <= set(FLAGS.references) else {}),
      **({"kid_vs_test": fid_kid.kid(feats["samples"], feats["test"])}
         if "test" in FLAGS.references else {}),
      "classifier_test_accuracy": float(np.mean(classify(test) == test_labels)),
      "class_shares": {name: float(s) for name, s in zip(CLASSES, shares)}, **agreement,
      "nearest_train_distance": {
          name: {q: float(np.quantile(d, q)) for q in (0.01, 0.1, 0.5, 0.9)}
          for name, d in (("samples", d_samples), ("test", d_test))},
      "inception_images_per_second": images_per_second,
      "device": str(jax.devices()[0].device_kind), "seconds": time.perf_counter() - start,
  }
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  pictures.save_class_rows_png(os.path.join(out, "grid_by_class.png"), images, predicted,
                               classes=range(len(CLASSES)))
  save_histogram(os.path.join(out, "nearest_train.png"), d_samples, d_test)
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Generator config replacing "
                                  "WORKDIR/config.json (default: the run's own).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "The generator's training workdir.")
  flags.DEFINE_string("classifier", None, "DIR/classifier written by train_encoder.")
  flags.DEFINE_string("out", None, "Where results.json, samples.npz and the PNGs go.")
  flags.DEFINE_string("inception_weights", None, "FID Inception weights (.npz).")
  flags.DEFINE_integer("num_samples", 10_000, "Samples to generate and score.")
  flags.DEFINE_integer("seed", 0, "Noise seed of the samples.")
  flags.DEFINE_list("references", ["test", "train"], "Splits to compute FID against (their "
                    "Inception features are cached, see --feature_cache).")
  flags.DEFINE_string("feature_cache", None, "Directory caching the splits' Inception features "
                      "(default: fid_kid.default_feature_cache(); 'none': no cache).")
  flags.DEFINE_integer("batch_size", 200, "Inception batch size.")
  flags.DEFINE_string("features_out", None, "Also save the samples' Inception features here "
                      "(.npz, 8 KB per sample).")
  flags.DEFINE_integer("max_reference", 0, "Use only this many test and train images (0: all; "
                       "for a quick check only).")
  flags.mark_flags_as_required(["workdir", "classifier", "out"])
  cli.run_absl(main)
