//! Evaluation (placeholder; being written).
