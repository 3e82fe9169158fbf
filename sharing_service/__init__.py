"""sharing: who an image is shared with, share limits and state, trust policies, launch verdicts."""
