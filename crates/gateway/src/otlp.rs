//! OTLP export (the `otlp` feature).
