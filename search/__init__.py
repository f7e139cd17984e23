"""creditsweep's search service: Ray Tune + hyperopt TPE sweeps recorded in Optuna studies."""
