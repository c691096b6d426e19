//! (scenarios follow)
