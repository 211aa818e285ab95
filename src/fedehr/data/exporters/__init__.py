"""Writers of cohorts (real or synthetic) in the formats users' pipelines read."""
