"""Reference values for the analyzer's model tests, computed with numpy, pandas, scipy and statsmodels,
independently of the Rust code. Run: python models.py (pip install numpy pandas scipy statsmodels); the
tests in analyzer/src/model/ quote what it prints, with the versions."""

import math

import numpy as np
import pandas as pd
import scipy
import statsmodels
import statsmodels.api as sm
from scipy.special import erfc
from scipy.stats import median_abs_deviation
from statsmodels.tsa.exponential_smoothing.ets import ETSModel


def show(name, values):
    print(f"{name}: [" + ", ".join(repr(float(v)) for v in values) + "]")


def score(z):
    return 0.0 if math.isnan(z) else float(1 - erfc(abs(z) / math.sqrt(2)) ** 0.1)


def scores():
    zs = [0.0, 1.0, 3.0, 8.3, 20.0]
    print("scores: [" + ", ".join(f"({z!r}, {score(z)!r})" for z in zs) + "]")


def regression():
    fit = sm.OLS([1, 4, 2, 8], sm.add_constant([5, 15, 25, 35])).fit()
    frame = fit.get_prediction([[1, 40]]).summary_frame(alpha=0.05)
    print("regression slope", fit.params[1], "at 40 s", frame["mean"][0], frame["obs_ci_lower"][0], frame["obs_ci_upper"][0])


def holt():
    y = [10.0, 12.0, 11.5, 13.0, 15.0, 14.2, 16.8, 18.1, 17.5, 19.9]
    series = pd.Series(y, index=pd.date_range("2026-01-01", periods=len(y), freq="10s"))
    model = ETSModel(series, error="add", trend="add", initialization_method="known", initial_level=y[0], initial_trend=0.0)
    result = model.smooth([0.5, 0.5 * 0.3])
    print("holt level and trend", result.states.iloc[-1].tolist())
    frame = result.get_prediction(start=len(y), end=len(y) + 2).summary_frame(alpha=0.05)
    for row in frame.itertuples():
        print("holt forecast", repr(row.mean), repr(row.pi_lower), repr(row.pi_upper))


# A noisy wave with two spikes, the input of every detector test.
SERIES = [10 + 2 * math.sin(i / 3) + (i % 7) * 0.3 for i in range(40)]
SERIES[25] = 30.0
SERIES[33] = -5.0


def ewma(alpha=0.2, warmup=5):
    x = pd.Series(SERIES)
    mean = x.ewm(alpha=alpha, adjust=False).mean().shift(1)
    std = np.sqrt(x.ewm(alpha=alpha, adjust=False).var(bias=True).shift(1))
    scores = [score((v - m) / s) if i >= warmup else 0.0 for i, (v, m, s) in enumerate(zip(x, mean, std))]
    show("ewma scores", scores)


def mad(windows=10, warmup=5):
    scores = []
    for i, v in enumerate(SERIES):
        before = np.array(SERIES[max(0, i - windows):i])
        if len(before) < warmup:
            scores.append(0.0)
            continue
        scores.append(score((v - np.median(before)) / median_abs_deviation(before, scale="normal")))
    show("mad scores", scores)


def seasonal(alpha=0.5, warmup=2):
    # 10 s windows, a 60 s period in 3 slots of 20 s.
    frame = pd.DataFrame({"value": SERIES, "slot": [(i * 10 % 60) // 20 for i in range(len(SERIES))]})
    groups = frame.groupby("slot")["value"]
    mean = groups.transform(lambda g: g.ewm(alpha=alpha, adjust=False).mean().shift(1))
    var = groups.transform(lambda g: g.ewm(alpha=alpha, adjust=False).var(bias=True).shift(1))
    seen = groups.cumcount()
    scores = [score((v - m) / math.sqrt(s)) if n >= warmup else 0.0 for v, m, s, n in zip(frame["value"], mean, var, seen)]
    show("seasonal scores", scores)


if __name__ == "__main__":
    print("numpy", np.__version__, "pandas", pd.__version__, "scipy", scipy.__version__, "statsmodels", statsmodels.__version__)
    show("series", SERIES)
    scores()
    regression()
    holt()
    ewma()
    mad()
    seasonal()
