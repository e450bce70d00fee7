// The configuration key lives with the job config in contracts/, shared with the dashboard's grouping.
export { configKey } from '../../contracts/experiment';
