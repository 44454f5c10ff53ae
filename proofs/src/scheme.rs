//! The three time-stepping schemes, their command-line spellings, and the orders each supports.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};
use thiserror::Error;

/// A one-step (Taylor) or two-step (BDF2) update applied to the linear test equation
/// `y' = lambda y`, written with `z = h lambda`.
///
/// * `ExplicitTaylor` (TaylorSeer's predictor): `y_{n+1} = sum_{m=0..M} z^m/m! y_n`.
/// * `ImplicitTaylor` (ResCa-IE for `M = 1`, ResCa-IT for `M >= 2`): the Taylor series is expanded
///   at the new point, `y_n = sum_{m=0..M} (-z)^m/m! y_{n+1}`.
/// * `Bdf2` (ResCa-IB): `y_{n+1} = 4/3 y_n - 1/3 y_{n-1} + 2/3 z y_{n+1}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    ExplicitTaylor,
    ImplicitTaylor,
    Bdf2,
}

impl Scheme {
    /// Every scheme, in the order the CLI lists them.
    pub const ALL: [Scheme; 3] = [Scheme::ExplicitTaylor, Scheme::ImplicitTaylor, Scheme::Bdf2];

    /// The spellings `FromStr` accepts, for error messages and `--help` texts.
    pub const ACCEPTED: &'static str = "explicit-taylor, implicit-taylor, bdf2";

    /// The CLI spelling: `explicit-taylor`, `implicit-taylor` or `bdf2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::ExplicitTaylor => "explicit-taylor",
            Scheme::ImplicitTaylor => "implicit-taylor",
            Scheme::Bdf2 => "bdf2",
        }
    }

    /// The orders this crate analyses: `1..=4` for the Taylor schemes (the orders ResCa and
    /// TaylorSeer use), exactly `2` for BDF2.
    pub fn supported_orders(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Scheme::ExplicitTaylor | Scheme::ImplicitTaylor => 1..=4,
            Scheme::Bdf2 => 2..=2,
        }
    }

    /// `Ok(())` when `order` is one of [`Scheme::supported_orders`], else an error that names
    /// the scheme, the rejected order and the accepted ones.
    pub fn check_order(self, order: u32) -> Result<(), StabilityError> {
        let supported = self.supported_orders();
        if supported.contains(&order) {
            Ok(())
        } else {
            Err(StabilityError::UnsupportedOrder {
                scheme: self,
                order,
                min: *supported.start(),
                max: *supported.end(),
            })
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scheme {
    type Err = ParseSchemeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scheme::ALL
            .into_iter()
            .find(|scheme| scheme.as_str() == s)
            .ok_or_else(|| ParseSchemeError {
                given: s.to_owned(),
            })
    }
}

/// Serialised as its CLI spelling, e.g. `"implicit-taylor"`.
impl Serialize for Scheme {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// An unknown scheme spelling.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown scheme `{given}`: accepted values are {}", Scheme::ACCEPTED)]
pub struct ParseSchemeError {
    /// The rejected spelling.
    pub given: String,
}

/// A (scheme, order) pair outside what this crate analyses.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StabilityError {
    #[error("order {order} is not supported for {scheme}: {}", accepted_orders(*min, *max))]
    UnsupportedOrder {
        scheme: Scheme,
        order: u32,
        min: u32,
        max: u32,
    },
}

fn accepted_orders(min: u32, max: u32) -> String {
    if min == max {
        format!("the only accepted order is {min}")
    } else {
        format!("accepted orders are {min}..={max}")
    }
}
