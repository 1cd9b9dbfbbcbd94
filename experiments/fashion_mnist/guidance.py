"""Class-conditional Fashion-MNIST with guidance (issue 14): quality against the guidance scale.

  python experiments/fashion_mnist/guidance.py --workdir=RUN --classifier=ENC/classifier \
      --out=experiments/fashion_mnist/results/guidance --cfg_scales=1,1.5,2,3,4 \
      [--per_class=100] [--unconditional=RUN_U] [--max_reference=2000]

For each α: `per_class` one-step samples of every class from the latest checkpoint's EMA
parameters; FID and KID against the test images (the FID Inception of
`lookahead_drift.inception`); the trained classifier's accuracy on the samples of each
requested class; a grid with one class per row. With --unconditional, the same numbers (FID,
KID) for an unconditional run's samples, as the baseline. Writes results.json, curves.png,
grid_alpha*.png in --out.
"""

import json
import os
import time

import jax
import numpy as np
from absl import flags

from lookahead_drift import cli, encoder_training, fid_kid, guidance, inception, inference
from lookahead_drift import input_pipeline, pictures

FLAGS = flags.FLAGS
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")


def save_curves(path: str, results: dict) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = results["per_alpha"]
  alphas = [r["alpha"] for r in rows]
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
  for ax, key, label in zip(axes, ("fid", "kid", "accuracy"),
                            ("FID vs test", "KID vs test", "classifier accuracy")):
    ax.plot(alphas, [r[key] for r in rows], "o-", label="conditional")
    if key == "kid":
      ax.fill_between(alphas, [r["kid"] - r["kid_std"] for r in rows],
                      [r["kid"] + r["kid_std"] for r in rows], alpha=0.2)
    if key != "accuracy" and "unconditional" in results:
      ax.axhline(results["unconditional"][key], color="gray", ls="--", label="unconditional")
    ax.set_xlabel("guidance scale α")
    ax.set_title(f"{label} ({results['num_reference']} test images)" if key != "accuracy"
                 else f"{label} (test images: {results['classifier_test_accuracy']:.3f})")
    ax.legend(fontsize=8)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)


def main(argv):
  del argv
  start = time.perf_counter()
  state = inference.restore(FLAGS.workdir)
  config = state.config
  g = guidance.from_config(config)
  if g is None:
    raise cli.UserError(f"{FLAGS.workdir} holds an unconditional run.")
  alphas = [guidance.check_alpha(a, g) for a in FLAGS.cfg_scales]
  out = FLAGS.out
  os.makedirs(out, exist_ok=True)
  data = dict(name="fashion_mnist", data_dir=config.data.data_dir, source="files")
  test, test_labels = input_pipeline.load_images({**data, "split": "test"})
  if FLAGS.max_reference:  # a random subset: quicker, and FID is then biased upwards
    keep = np.random.default_rng(0).permutation(len(test))[:FLAGS.max_reference]
    test, test_labels = test[keep], test_labels[keep]
  extractor = inception.FeatureExtractor(FLAGS.inception_weights, batch_size=250)
  test_feats = extractor(test, progress=True)
  test_stats = fid_kid.stats_from_features(test_feats)
  classify = encoder_training.load_classifier(FLAGS.classifier)

  def score(images):
    feats = extractor(images, progress=True)
    kid, kid_std = fid_kid.kid(feats, test_feats)
    return {"fid": fid_kid.fid_from_stats(fid_kid.stats_from_features(feats), test_stats),
            "kid": kid, "kid_std": kid_std}

  labels = np.repeat(np.arange(len(CLASSES)), FLAGS.per_class)
  results = {"step": int(state.step), "per_class": FLAGS.per_class,
             "num_reference": int(len(test)),
             "classifier_test_accuracy": float(np.mean(classify(test) == test_labels)),
             "per_alpha": []}
  for alpha in alphas:
    images = pictures.to_uint8(inference.generate(
        config, state.ema_params, len(labels), jax.random.PRNGKey(FLAGS.seed), labels=labels,
        alpha=alpha))
    predicted = classify(images)
    per_class = [float(np.mean(predicted[labels == c] == c)) for c in range(len(CLASSES))]
    row = {"alpha": alpha, **score(images), "accuracy": float(np.mean(predicted == labels)),
           "accuracy_per_class": dict(zip(CLASSES, per_class))}
    results["per_alpha"].append(row)
    print(json.dumps(row), flush=True)
    pictures.save_class_rows_png(os.path.join(out, f"grid_alpha{alpha:g}.png"), images, labels)
    np.savez_compressed(os.path.join(out, f"samples_alpha{alpha:g}.npz"), images=images,
                        labels=labels)
  if FLAGS.unconditional:
    base = inference.restore(FLAGS.unconditional)
    images = pictures.to_uint8(inference.generate(base.config, base.ema_params, len(labels),
                                                  jax.random.PRNGKey(FLAGS.seed)))
    shares = np.bincount(classify(images), minlength=len(CLASSES)) / len(images)
    results["unconditional"] = {"step": int(base.step), **score(images),
                                "class_shares": dict(zip(CLASSES, shares.tolist()))}
  results["device"] = str(jax.devices()[0].device_kind)
  results["seconds"] = time.perf_counter() - start
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  save_curves(os.path.join(out, "curves.png"), results)
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "The conditional run's workdir.")
  flags.DEFINE_string("unconditional", None, "An unconditional run's workdir (baseline).")
  flags.DEFINE_string("classifier", None, "DIR/classifier written by train_encoder.")
  flags.DEFINE_string("out", None, "Where results.json and the PNGs go.")
  flags.DEFINE_list("cfg_scales", ["1", "1.5", "2", "3", "4"], "Guidance scales α.")
  flags.DEFINE_integer("per_class", 100, "Samples per class and α.")
  flags.DEFINE_integer("max_reference", 0, "Use this many test images (0: all 10,000).")
  flags.DEFINE_string("inception_weights", None, "FID Inception weights (.npz).")
  flags.DEFINE_integer("seed", 0, "Noise seed (the same noise for every α).")
  flags.mark_flags_as_required(["workdir", "classifier", "out"])
  cli.run_absl(main)
