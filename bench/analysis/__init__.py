"""From runs to conclusions: statistics, the paired comparison, the report files, baselines and the CI gate."""
