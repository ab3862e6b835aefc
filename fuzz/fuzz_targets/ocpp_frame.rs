//! `ocpp::frame::parse` on arbitrary text. Beyond "no panic": every frame whose id could
//! be read gets a CALLERROR that parses back as a CALLERROR for that id and code, and a
//! parsed CALL or CALLRESULT serializes back to a frame with the same id (and action).
#![no_main]

use chargesite::ocpp::frame::{self, Frame, MAX_MESSAGE_ID_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match frame::parse(text) {
        Err(e) => {
            let Some(id) = e.id else { return };
            let valid = !id.is_empty() && id.chars().count() <= MAX_MESSAGE_ID_LEN;
            let answer = frame::call_error(&id, e.code, &e.description);
            match frame::parse(&answer) {
                Ok(Frame::CallError {
                    id: back,
                    code,
                    description,
                }) if valid => {
                    assert_eq!(back, id);
                    assert_eq!(code, e.code.as_str());
                    assert!(description.chars().count() <= 255);
                }
                // An empty or too long id is echoed, and refused again (by id) on re-read.
                Err(again) if !valid => {
                    assert_eq!(again.id.as_deref(), Some(id.as_str()));
                }
                other => panic!("CALLERROR {answer} reads back as {other:?}"),
            }
        }
        Ok(Frame::Call {
            id,
            action,
            payload,
        }) => match frame::parse(&frame::call(&id, &action, &payload)) {
            Ok(Frame::Call {
                id: i, action: a, ..
            }) => assert_eq!((i, a), (id, action)),
            other => panic!("CALL does not read back: {other:?}"),
        },
        Ok(Frame::CallResult { id, payload }) => {
            match frame::parse(&frame::call_result(&id, payload)) {
                Ok(Frame::CallResult { id: i, .. }) => assert_eq!(i, id),
                other => panic!("CALLRESULT does not read back: {other:?}"),
            }
        }
        Ok(Frame::CallError { .. }) => {}
    }
});
