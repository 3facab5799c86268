//! The delivery engine: workers claim due deliveries, sign them, POST them, record
//! the attempt and schedule the next try.

pub mod answer;
pub mod dispatch;
pub mod guard;
pub mod health;
pub mod lanes;
pub mod retry;
pub mod sign;
pub mod worker;
