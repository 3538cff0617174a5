//! SIF format (in progress).
