"""Does the proxy rank generators as Inception FID does, and how noisy is it? (issue 21)

  python -m experiments.fashion_mnist.recipe.validate floor
  python -m experiments.fashion_mnist.recipe.validate inception --sets=base,pos4x,... [--n=2000]
  python -m experiments.fashion_mnist.recipe.validate summary

floor: proxy FD/KID between real image sets (two disjoint halves of the test images; 5,000
training images against the 10,000 test images), so a difference between arms can be read
against what two real samples already differ by. The same arm trained with two seeds is the
other half of the noise floor (arms "base" and "base_seed1" of run.py).

inception: for each sample set, the first --n samples scored by Inception FID and KID against
the cached test features and by the proxy on the same images; one JSON per set in
results/validation/, so a killed run keeps what it finished. A set is an arm of run.py
(samples of its raw parameters, by which run.py ranks short arms) or one of the committed
10k-sample runs ("cpu_issue11", "gpu_issue11").

guidance: the four sample sets of the guidance study (experiments/fashion_mnist/guidance.py,
α = 1..4, 500 samples each) scored by the proxy with that study's protocol (the same 1,000
random test images), beside the Inception FIDs it recorded: a second, independent check.

summary: Spearman and Pearson correlation of proxy FD with Inception FID over the sets.

curve --workdir=RUN: the proxy FD/KID (5,000 samples, raw and EMA) at every checkpoint a
full-length run kept, into results/NAME_curve.json (NAME the run folder's name), one point at a
time so a killed run keeps what it scored: is the run still improving when it stops?

final --samples=DIR/samples.npz: the proxy's FD/KID of every sample of the full-length recipe
run (written by experiments/fashion_mnist/fit.py) against the 10,000 test images, and the class
shares under the proxy net (a classifier no training run used), into results/final_proxy.json.
"""

import argparse
import glob
import json
import os

import jax
import numpy as np
from scipy import stats as scipy_stats

from experiments.fashion_mnist.recipe import run
from lookahead_drift import fid_kid, inception, inference, input_pipeline, pictures, proxy_metric

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "validation")
COMMITTED = {
    "cpu_issue11": os.path.join(HERE, "..", "results", "cpu", "step5000", "samples.npz"),
    "gpu_issue11": os.path.join(HERE, "..", "results", "gpu", "step4638", "samples.npz"),
}


def _test_images() -> np.ndarray:
  return input_pipeline.load_images(dict(name="fashion_mnist", split="test"))[0]


def _proxy(images, reference, scorer):
  s = scorer.score(images, reference)
  return {k: s[k] for k in ("proxy_fd", "proxy_kid", "proxy_kid_std", "proxy_sha256")}


def floor(scorer) -> dict:
  test = _test_images()
  train = input_pipeline.load_images(dict(name="fashion_mnist", split="train"))[0]
  rng = np.random.default_rng(0)
  half = rng.permutation(len(test))
  train5k = train[rng.choice(len(train), 5000, replace=False)]
  out = {
      "test_half_vs_test_half (5000 vs 5000)": _proxy(
          test[half[:5000]], scorer.features(test[half[5000:]]), scorer),
      "train_5000_vs_test_10000": _proxy(train5k, scorer.features(test), scorer),
      "train_2000_vs_test_10000": _proxy(train5k[:2000], scorer.features(test), scorer),
  }
  os.makedirs(OUT, exist_ok=True)
  with open(os.path.join(OUT, "floor.json"), "w") as f:
    json.dump(out, f, indent=2)
  return out


def _samples(name: str, n: int, runs: str) -> np.ndarray:
  if name in COMMITTED:
    with np.load(COMMITTED[name]) as data:
      return data["images"][:n]
  trained = inference.restore(os.path.join(runs, name))
  return pictures.to_uint8(inference.generate(trained.config, trained.params, n,
                                              jax.random.PRNGKey(0)))


def inception_sets(names, n: int, runs: str, scorer, out: str = OUT) -> None:
  """Inception FID/KID and the proxy of the first n samples of each set: out/NAME_nN.json."""
  extractor = inception.FeatureExtractor(None, batch_size=25)
  test_feats = fid_kid.dataset_features("fashion_mnist", "test", extractor,
                                        cache_dir=fid_kid.default_feature_cache())
  test_stats = fid_kid.stats_from_features(test_feats)
  proxy_ref = scorer.features(_test_images())
  os.makedirs(out, exist_ok=True)
  for name in names:
    path = os.path.join(out, f"{name}_n{n}.json")
    if os.path.exists(path):
      continue
    images = _samples(name, n, runs)
    feats = extractor(images, progress=True)
    record = dict(set=name, n=len(images),
                  inception_fid=fid_kid.fid_from_stats(fid_kid.stats_from_features(feats),
                                                       test_stats),
                  inception_kid=fid_kid.kid(feats, test_feats),
                  **_proxy(images, proxy_ref, scorer))
    with open(path, "w") as f:
      json.dump(record, f, indent=2)
    print(json.dumps(record), flush=True)


def guidance_sets(scorer) -> dict:
  folder = os.path.join(HERE, "..", "results", "guidance_cpu")
  with open(os.path.join(folder, "results.json")) as f:
    recorded = json.load(f)
  test = _test_images()
  keep = np.random.default_rng(0).permutation(len(test))[:recorded["num_reference"]]
  reference = scorer.features(test[keep])  # guidance.py's --max_reference subset
  rows = []
  for entry in recorded["per_alpha"]:
    alpha = entry["alpha"]
    with np.load(os.path.join(folder, f"samples_alpha{alpha:g}.npz")) as data:
      images = data["images"] if "images" in data else data["samples"]
    images = pictures.to_uint8(images) if images.dtype != np.uint8 else images
    rows.append(dict(alpha=alpha, n=len(images), inception_fid=entry["fid"],
                     **_proxy(images, reference, scorer)))
  fid = [r["inception_fid"] for r in rows]
  fd = [r["proxy_fd"] for r in rows]
  out = dict(rows=rows, spearman=float(scipy_stats.spearmanr(fid, fd).statistic))
  with open(os.path.join(OUT, "guidance.json"), "w") as f:
    json.dump(out, f, indent=2)
  return out


def summary() -> dict:
  records = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(OUT, "*_n*.json")))]
  fid = np.array([r["inception_fid"] for r in records])
  fd = np.array([r["proxy_fd"] for r in records])
  out = dict(sets=[(r["set"], r["n"], round(r["inception_fid"], 2), round(r["proxy_fd"], 3))
                   for r in records])
  if len(records) >= 3:
    out["spearman"] = float(scipy_stats.spearmanr(fid, fd).statistic)
    out["pearson"] = float(np.corrcoef(fid, fd)[0, 1])
  print(json.dumps(out, indent=2))
  return out


def final(samples_path: str, scorer) -> dict:
  with np.load(samples_path) as data:
    images = data["images"]
  test = _test_images()
  out = {"samples": samples_path, "num_samples": int(len(images)),
         **_proxy(images, scorer.features(test), scorer)}
  shares = np.bincount(scorer.classify(images), minlength=10) / len(images)
  out["proxy_class_shares"] = [round(float(x), 4) for x in shares]
  name = os.path.basename(os.path.dirname(os.path.abspath(samples_path)))  # final, final_cond
  with open(os.path.join(HERE, "results", f"{name}_proxy.json"), "w") as f:
    json.dump(out, f, indent=2)
  return out


def curve(workdir: str, scorer, num: int = 5000) -> dict:
  path = os.path.join(HERE, "results", f"{os.path.basename(os.path.normpath(workdir))}_curve.json")
  done = {}
  if os.path.exists(path):
    with open(path) as f:
      done = {p["step"]: p for p in json.load(f)["points"]}
  reference = scorer.features(_test_images())
  for step in inference.checkpoint_steps(workdir):
    if step not in done:
      done[step] = run.score(workdir, scorer, reference, num, None, step=step)
      out = {"workdir": workdir, "num_samples": num,
             "points": [done[s] for s in sorted(done)]}
      with open(path, "w") as f:
        json.dump(out, f, indent=2)
      print(f"step {step}: proxy FD raw {done[step]['raw']['proxy_fd']:.2f}, "
            f"EMA {done[step]['ema']['proxy_fd']:.2f}", flush=True)
  return {s: done[s]["ema"]["proxy_fd"] for s in sorted(done)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("what", choices=("floor", "inception", "guidance", "summary", "final",
                                           "curve"))
  parser.add_argument("--sets", default="")
  parser.add_argument("--n", type=int, default=2000)
  parser.add_argument("--samples", default=os.path.join(HERE, "final", "samples.npz"))
  parser.add_argument("--runs", default="/work/runs/recipe")
  parser.add_argument("--workdir", default="/work/runs/full_cond", help="for curve")
  parser.add_argument("--proxy", default=os.path.join(HERE, "proxy_net.npz"))
  args = parser.parse_args()
  if args.what == "summary":
    summary()
    return
  scorer = proxy_metric.load(args.proxy)
  if args.what == "floor":
    print(json.dumps(floor(scorer), indent=2))
  elif args.what == "final":
    print(json.dumps(final(args.samples, scorer), indent=2))
  elif args.what == "curve":
    print(json.dumps(curve(args.workdir, scorer), indent=2))
  elif args.what == "guidance":
    print(json.dumps(guidance_sets(scorer), indent=2))
  else:
    inception_sets([s for s in args.sets.split(",") if s], args.n, args.runs, scorer)


if __name__ == "__main__":
  main()
