//! SPANK plugin glue (issue 3).
