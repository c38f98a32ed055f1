"""What leaves a study: the final evaluation on the test split, and the exported recipe."""
