//! (being written)
#[derive(Clone, Debug, Default)]
pub struct Config;
#[derive(Clone, Debug, Default)]
pub struct Bugs;
#[derive(Debug)]
pub enum ProposeError {}
#[derive(Debug)]
pub enum Role {}
#[derive(Debug)]
pub struct StatusReport;
pub struct Replica;
