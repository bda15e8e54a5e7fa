//! The test suites' view of [`grove_tests::daemons`]: real daemons as child processes.

#![allow(unused_imports, dead_code)]

pub use grove_tests::daemons::*;
