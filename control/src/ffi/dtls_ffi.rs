//! The only `unsafe` of the WebRTC modules: OpenSSL's DTLS retransmission timer.
//!
//! The `openssl` crate does not wrap `DTLSv1_get_timeout` / `DTLSv1_handle_timeout` (C macros
//! over `SSL_ctrl` with `DTLS_CTRL_GET_TIMEOUT` = 73 and `DTLS_CTRL_HANDLE_TIMEOUT` = 74) nor
//! `DTLS_set_timer_cb` (OpenSSL ≥ 1.1.1). Owns: those three calls. May not touch anything else.
#![allow(unsafe_code)]

use std::os::raw::{c_int, c_long, c_uint, c_void};
use std::time::Duration;

use foreign_types::ForeignTypeRef;
use openssl::ssl::SslRef;

/// `DTLS_CTRL_GET_TIMEOUT` from `openssl/ssl.h`.
const DTLS_CTRL_GET_TIMEOUT: c_int = 73;
/// `DTLS_CTRL_HANDLE_TIMEOUT` from `openssl/ssl.h`.
const DTLS_CTRL_HANDLE_TIMEOUT: c_int = 74;

/// First retransmission timeout. RFC 6347 §4.2.4.1 recommends 1 s; on the WebRTC slow path the
/// peer has already answered ICE checks, so a shorter first timer (as browsers use) is safe.
pub(crate) const INITIAL_RETRANSMIT: Duration = Duration::from_millis(100);
/// Upper bound of the doubling timer (RFC 6347 §4.2.4.1 allows up to 60 s; a handshake on
/// this path is abandoned long before that).
pub(crate) const MAX_RETRANSMIT: Duration = Duration::from_secs(3);

type TimerCb = unsafe extern "C" fn(ssl: *mut openssl_sys::SSL, timer_us: c_uint) -> c_uint;

extern "C" {
    // void DTLS_set_timer_cb(SSL *s, DTLS_timer_cb cb); exported by libssl ≥ 1.1.1.
    fn DTLS_set_timer_cb(s: *mut openssl_sys::SSL, cb: Option<TimerCb>);
}

/// Timer policy handed to OpenSSL: `timer_us` is 0 for the first flight, otherwise the previous
/// timeout; we double it (RFC 6347 §4.2.4.1) up to [`MAX_RETRANSMIT`].
unsafe extern "C" fn timer_cb(_ssl: *mut openssl_sys::SSL, timer_us: c_uint) -> c_uint {
    let initial = INITIAL_RETRANSMIT.as_micros() as c_uint;
    let max = MAX_RETRANSMIT.as_micros() as c_uint;
    if timer_us == 0 {
        initial
    } else {
        timer_us.saturating_mul(2).min(max)
    }
}

/// Install [`timer_cb`] on `ssl`.
pub(crate) fn install_timer(ssl: &mut SslRef) {
    // SAFETY: `ssl.as_ptr()` is a live `SSL*` owned by the borrowed `SslRef`; the callback is a
    // plain function with the C signature libssl expects and reads no state through the pointer.
    unsafe { DTLS_set_timer_cb(ssl.as_ptr(), Some(timer_cb)) }
}

/// `DTLSv1_get_timeout`: time left on OpenSSL's retransmission timer (zero when it has
/// expired), or `None` when no timer runs.
pub(crate) fn get_timeout(ssl: &SslRef) -> Option<Duration> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: `ssl.as_ptr()` is a live `SSL*`; for DTLS_CTRL_GET_TIMEOUT libssl writes one
    // `struct timeval` through `parg`, which points at our stack `tv` for the whole call.
    let r: c_long = unsafe {
        openssl_sys::SSL_ctrl(
            ssl.as_ptr(),
            DTLS_CTRL_GET_TIMEOUT,
            0,
            &mut tv as *mut libc::timeval as *mut c_void,
        )
    };
    if r <= 0 {
        return None;
    }
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u32::try_from(tv.tv_usec).unwrap_or(0);
    Some(Duration::from_secs(secs) + Duration::from_micros(u64::from(micros)))
}

/// `DTLSv1_handle_timeout`: retransmit the last flight if OpenSSL's timer has expired.
/// Returns 1 when a flight was retransmitted, 0 when nothing was due, negative on a fatal error.
/// The caller must hold the endpoint exclusively (`Dtls::handle_timeout` takes `&mut self`).
pub(crate) fn handle_timeout(ssl: &SslRef) -> c_long {
    // SAFETY: `ssl.as_ptr()` is a live `SSL*`; the owning `Dtls` is borrowed mutably by our
    // only caller, so nothing else uses the `SSL` during the call (the `openssl` crate mutates
    // through `&SslRef` the same way). DTLS_CTRL_HANDLE_TIMEOUT takes no argument (`parg`
    // NULL) and may write to the BIO, which the same `SSL` owns.
    unsafe {
        openssl_sys::SSL_ctrl(
            ssl.as_ptr(),
            DTLS_CTRL_HANDLE_TIMEOUT,
            0,
            std::ptr::null_mut(),
        )
    }
}
