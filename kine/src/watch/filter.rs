//! The NOPUT and NODELETE watch filters.

use crate::proto::Event;
use crate::proto::mvccpb::event::EventType;
use crate::proto::watch_create_request::FilterType;

/// Which event types a watcher drops.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter {
    no_put: bool,
    no_delete: bool,
}

impl Filter {
    /// From a create request's `filters`; unknown values are ignored.
    pub fn from_request(filters: &[i32]) -> Self {
        let mut f = Filter::default();
        for &x in filters {
            match FilterType::try_from(x) {
                Ok(FilterType::Noput) => f.no_put = true,
                Ok(FilterType::Nodelete) => f.no_delete = true,
                Err(_) => {}
            }
        }
        f
    }

    /// Whether the watcher wants `event`.
    pub fn passes(&self, event: &Event) -> bool {
        if event.r#type == EventType::Put as i32 {
            !self.no_put
        } else {
            !self.no_delete
        }
    }
}
