//! The gRPC services. Each handler follows the same path: take the
//! principal the interceptor attached, validate the request, authorize it,
//! then read or change the store, sealing and opening values through the
//! keyring. Handlers hold no state of their own; [`AppState`] is shared.

pub mod convert;
pub mod secrets;

use crate::auth::Authorizer;
use crate::keyring::Keyring;
use crate::store::Store;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    pub keyring: Keyring,
    pub authorizer: Authorizer,
}
